//! Writes the seed corpus of every fuzz target into `fuzz/corpus/<target>/`: valid encodings
//! made with the daemon's own encoders, plus edge cases. Deterministic, so rerunning it only
//! rewrites the same files.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example gen_corpus`

use std::path::{Path, PathBuf};

use voucherd::core::event::{RefundPolicy, Rollover};
use voucherd::core::lifecycle::MerchantFacts;
use voucherd::core::{
    CampaignSpec, ClaimFields, CountyCode, Crs, Event, Location, TrancheControl, TrancheSpec,
    UnixMillis, VoucherClaimed,
};
use voucherd::core::{DigestKey, IdentityKeys, ImportRow, MerchantRules, MerchantStatus};
use voucherd::core::{RedemptionId, VoucherId};
use voucherd::dispenser::{
    ClaimInput, ClaimOutcome, CountyDirectory, Dispenser, PoolRequest, Recovered, RedeemInput,
    RedeemOutcome, RefundOutcome, RevokeTargets,
};
use voucherd::geo::{RegionIndex, SeatIndex};
use voucherd::journal::{self, MAX_FIELD_BYTES};
use voucherd::wal::frame::{self, SEGMENT_HEADER_BYTES, SegmentHeader};
use voucherd::{snapshot, wal};
use voucherd_fuzz::{
    FLAG_BAD_NAME, FLAG_EXTRA_FILES, FLAG_FAIL_CALLBACK, FLAG_FIX_HEADERS, FLAG_GAP,
    FLAG_PAD_PAGES, SNAP_FLAG_COVERED_SEQ, SNAP_FLAG_RESEAL, encode_batch, replay_input_bytes,
    snapshot_body,
};

struct Corpus {
    dir: PathBuf,
}

impl Corpus {
    fn new(target: &str) -> Corpus {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(target);
        std::fs::create_dir_all(&dir).expect("create corpus dir");
        Corpus { dir }
    }

    fn put(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.dir.join(format!("seed-{name}")), bytes).expect("write seed");
    }
}

fn claim(user: &str, request: &str, lng: f64, lat: f64) -> VoucherClaimed {
    VoucherClaimed::new(ClaimFields {
        tranche_id: "t-2026-05-01",
        voucher_random: 0x0123_4567_89AB_CDEF,
        county: CountyCode(420_502),
        claimed_at: UnixMillis(1_777_600_000_000),
        user_id: user,
        id_hash: Some(&"ab".repeat(32)),
        phone_hash: Some(&"0f".repeat(16)),
        device_id: Some("ios-AE12"),
        request_id: request,
        request_fingerprint: 0xDEAD_BEEF_0000_0000_0000_0000_CAFE_F00D,
        location: Location {
            lng,
            lat,
            crs: Crs::Gcj02,
        },
    })
}

fn events() -> Vec<(&'static str, Event)> {
    let full = claim("u", "r", 0.0, 0.0);
    let mut minimal = VoucherClaimed::new(ClaimFields {
        id_hash: None,
        phone_hash: None,
        device_id: None,
        ..full.fields()
    });
    minimal.location.crs = Crs::Wgs84;
    vec![
        (
            "campaign",
            Event::CampaignDefined(CampaignSpec {
                campaign_id: "yc-2026".into(),
                name: "宜昌消费券".into(),
                budget_fen: 50_000_000_000,
                refund_policy: RefundPolicy::RestoreIfValid,
                rollover: Rollover::NextTranche,
            }),
        ),
        (
            "campaign-long-name",
            Event::CampaignDefined(CampaignSpec {
                campaign_id: "c".into(),
                name: "x".repeat(MAX_FIELD_BYTES),
                budget_fen: u64::MAX,
                refund_policy: RefundPolicy::Prorata,
                rollover: Rollover::None,
            }),
        ),
        (
            "tranche",
            Event::TrancheDefined {
                ordinal: 1,
                spec: TrancheSpec {
                    tranche_id: "t-2026-05-01".into(),
                    campaign_id: "yc-2026".into(),
                    opens_at: UnixMillis(1_777_600_000_000),
                    closes_at: UnixMillis(1_777_686_400_000),
                    expires_at: UnixMillis(1_780_000_000_000),
                    face_value_fen: 2_000,
                    threshold_fen: 10_000,
                    quotas: vec![
                        (CountyCode(420_502), 1_000),
                        (CountyCode(420_503), 0),
                        (CountyCode(420_581), u32::MAX),
                    ],
                    redeem_anywhere_in_city: false,
                    industries: vec!["餐饮".into(), "零售".into()],
                },
            },
        ),
        (
            "tranche-no-quotas",
            Event::TrancheDefined {
                ordinal: u32::MAX,
                spec: TrancheSpec {
                    tranche_id: "t".into(),
                    campaign_id: "c".into(),
                    opens_at: UnixMillis(i64::MIN),
                    closes_at: UnixMillis(0),
                    expires_at: UnixMillis(i64::MAX),
                    face_value_fen: u64::MAX,
                    threshold_fen: 0,
                    quotas: vec![],
                    redeem_anywhere_in_city: true,
                    industries: vec![],
                },
            },
        ),
        (
            "pause",
            Event::TrancheControlled {
                tranche_id: "t-2026-05-01".into(),
                control: TrancheControl::Pause,
                at: UnixMillis(1_777_600_100_000),
            },
        ),
        (
            "resume",
            Event::TrancheControlled {
                tranche_id: "t-2026-05-01".into(),
                control: TrancheControl::Resume,
                at: UnixMillis(-1),
            },
        ),
        (
            "claim",
            Event::VoucherClaimed(claim("alipay-2088", "req-1", 111.29, 30.69)),
        ),
        ("claim-minimal", Event::VoucherClaimed(minimal)),
        (
            "claim-nan",
            Event::VoucherClaimed(claim("u2", "r2", f64::NAN, f64::NEG_INFINITY)),
        ),
    ]
}

fn wal_frame_decode() {
    let c = Corpus::new("wal_frame_decode");
    let mode_raw = |bytes: &[u8]| [&[0u8][..], bytes].concat();
    let one = encode_batch(1, &[(4, b"hello")]);
    c.put("batch-one-record", &mode_raw(&one));
    c.put(
        "batch-empty-payload",
        &mode_raw(&encode_batch(7, &[(1, b"")])),
    );
    let journal_batch: Vec<(u8, Vec<u8>)> = events()
        .iter()
        .map(|(_, e)| (journal::kind_of(e), journal::encode(e)))
        .collect();
    let refs: Vec<(u8, &[u8])> = journal_batch.iter().map(|(k, p)| (*k, &p[..])).collect();
    c.put("batch-journal-events", &mode_raw(&encode_batch(1, &refs)));
    c.put(
        "batch-last-seq",
        &mode_raw(&encode_batch(
            u64::MAX - 2,
            &[(255, b"a"), (1, b"12345678")],
        )),
    );
    let header = frame::encode_segment_header(&SegmentHeader {
        segment_index: 1,
        first_seq: 1,
        segment_size_bytes: 1 << 20,
    });
    c.put("segment-header", &mode_raw(&header));
    c.put("truncated-batch", &mode_raw(&one[..one.len() - 8]));
    let mut flipped = one.clone();
    flipped[30] ^= 0x10;
    c.put("bit-flip", &mode_raw(&flipped));
    c.put("zeros", &[0u8; 64]);
    // Round-trip mode: first seq (8), flip position (2), then kind, u16 length, payload.
    let mut rt = vec![1u8];
    rt.extend_from_slice(&1u64.to_le_bytes());
    rt.extend_from_slice(&77u16.to_le_bytes());
    rt.extend_from_slice(&[4, 5, 0, b'h', b'e', b'l', b'l', b'o']);
    rt.extend_from_slice(&[2, 0, 0]);
    c.put("roundtrip-two", &rt);
    let mut rt_max = vec![1u8];
    rt_max.extend_from_slice(&u64::MAX.to_le_bytes());
    rt_max.extend_from_slice(&[0xFF, 0xFF, 9, 0x00, 0xC0, 0xEE, 9, 1, 0, b'x']);
    c.put("roundtrip-top-seq", &rt_max);
}

fn journal_decode() {
    let c = Corpus::new("journal_decode");
    for (name, event) in events() {
        let mut bytes = vec![journal::kind_of(&event)];
        bytes.extend(journal::encode(&event));
        c.put(name, &bytes);
    }
    c.put("unknown-kind", &[9, 0, 0]);
    c.put("kind-zero", &[0]);
    // A string length just over the limit, and a quota count just over the limit.
    c.put("field-too-long", &[1, 0x01, 0x04, b'x']);
    let mut many_quotas = vec![journal::KIND_TRANCHE_DEFINED];
    many_quotas.extend_from_slice(&1u32.to_le_bytes());
    many_quotas.extend_from_slice(&[1, 0, b't', 1, 0, b'c']);
    many_quotas.extend_from_slice(&[0u8; 40]);
    many_quotas.extend_from_slice(&1025u32.to_le_bytes());
    c.put("too-many-quotas", &many_quotas);
    c.put("not-utf8", &[1, 2, 0, 0xC3, 0x28, 0, 0]);
}

fn claim_body() {
    let c = Corpus::new("claim_body");
    let full = r#"{"tranche_id":"t-2026-05-01","user_id":"alipay-2088102122524333","identity":{"id_hash":"ABCDEF0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789","phone_hash":"0123456789abcdef0123456789abcdef","device_id":"ios-AE12F0"},"location":{"lng":111.2865,"lat":30.6919,"crs":"wgs84"},"request_id":"req-000001"}"#;
    let cases: &[(&str, &str)] = &[
        ("full", full),
        (
            "minimal",
            r#"{"tranche_id":"t","user_id":"u","location":{"lng":111.3,"lat":30.7},"request_id":"r"}"#,
        ),
        (
            "gcj02-null-identity",
            r#"{"tranche_id":"t.1_a-B","user_id":"wx_o6_abc","identity":null,"location":{"lng":-180,"lat":90,"crs":"gcj02"},"request_id":"~!@#$%^&*()"}"#,
        ),
        (
            "empty-identity",
            r#"{"tranche_id":"t","user_id":"u","identity":{},"location":{"lng":180.0,"lat":-90.0,"crs":null},"request_id":"r"}"#,
        ),
        (
            "hash-sha512",
            &format!(
                r#"{{"tranche_id":"t","user_id":"u","identity":{{"id_hash":"{}"}},"location":{{"lng":1e2,"lat":3.07e1}},"request_id":"r"}}"#,
                "F".repeat(128)
            ),
        ),
        (
            "raw-phone",
            r#"{"tranche_id":"t","user_id":"13800138000","location":{"lng":111.3,"lat":30.7},"request_id":"r"}"#,
        ),
        (
            "raw-id-card",
            r#"{"tranche_id":"t","user_id":"42050219900101123X","location":{"lng":111.3,"lat":30.7},"request_id":"r"}"#,
        ),
        (
            "unknown-field",
            r#"{"tranche_id":"t","user_id":"u","location":{"lng":111.3,"lat":30.7},"request_id":"r","requestid":"x"}"#,
        ),
        (
            "out-of-range",
            r#"{"tranche_id":"t","user_id":"u","location":{"lng":1e400,"lat":-90.0000001},"request_id":"r"}"#,
        ),
        (
            "unicode-escapes",
            r#"{"tranche_id":"t\u0041","user_id":"u\u00e9","location":{"lng":0,"lat":0},"request_id":"\ud83d\ude00"}"#,
        ),
        ("not-json", "tranche_id=t&user_id=u"),
        ("trailing", r#"{"tranche_id":"t"} {}"#),
        ("nested", &format!("{}{}", "[".repeat(200), "]".repeat(200))),
    ];
    for (name, body) in cases {
        c.put(name, body.as_bytes());
    }
}

fn wal_replay() {
    let c = Corpus::new("wal_replay");
    let events = events();
    let payloads: Vec<(u8, Vec<u8>)> = events
        .iter()
        .map(|(_, e)| (journal::kind_of(e), journal::encode(e)))
        .collect();
    let refs: Vec<(u8, &[u8])> = payloads.iter().map(|(k, p)| (*k, &p[..])).collect();
    let batch_a = encode_batch(1, &refs[..4]);
    let batch_b = encode_batch(5, &refs[4..]);
    let next = 1 + refs.len() as u64;
    let batch_c = encode_batch(next, &[(4, b"third segment")]);

    let fix = FLAG_FIX_HEADERS;
    c.put("empty-segment", &replay_input_bytes(fix, &[vec![]]));
    c.put(
        "one-segment-two-batches",
        &replay_input_bytes(fix, &[[batch_a.clone(), batch_b.clone()].concat()]),
    );
    c.put(
        "two-segments",
        &replay_input_bytes(fix, &[batch_a.clone(), [batch_b.clone(), batch_c].concat()]),
    );
    c.put(
        "padded-pages",
        &replay_input_bytes(fix | FLAG_PAD_PAGES, std::slice::from_ref(&batch_a)),
    );
    let torn = [batch_a.clone(), batch_b[..batch_b.len() / 2].to_vec()].concat();
    c.put(
        "torn-tail",
        &replay_input_bytes(fix, std::slice::from_ref(&torn)),
    );
    c.put(
        "torn-sealed-segment",
        &replay_input_bytes(fix, &[torn, batch_b.clone()]),
    );
    let mut damaged_then_valid = [batch_a.clone(), vec![0xFF; 8], batch_b.clone()].concat();
    damaged_then_valid[8] ^= 1;
    c.put(
        "damage-then-valid-batch",
        &replay_input_bytes(fix, &[damaged_then_valid]),
    );
    c.put(
        "seq-gap",
        &replay_input_bytes(fix, &[[batch_b.clone(), batch_a.clone()].concat()]),
    );
    c.put(
        "missing-segment",
        &replay_input_bytes(fix | FLAG_GAP, &[batch_a.clone(), batch_b.clone()]),
    );
    c.put(
        "extra-files",
        &replay_input_bytes(fix | FLAG_EXTRA_FILES, std::slice::from_ref(&batch_a)),
    );
    c.put(
        "bad-name",
        &replay_input_bytes(fix | FLAG_BAD_NAME, std::slice::from_ref(&batch_a)),
    );
    c.put(
        "failing-callback",
        &replay_input_bytes(
            fix | FLAG_FAIL_CALLBACK | (2 << 6),
            std::slice::from_ref(&batch_a),
        ),
    );
    // Raw mode: the piece is the whole file, header included.
    let mut raw = frame::encode_segment_header(&SegmentHeader {
        segment_index: 1,
        first_seq: 1,
        segment_size_bytes: (SEGMENT_HEADER_BYTES + batch_a.len()) as u64,
    })
    .to_vec();
    raw.extend_from_slice(&batch_a);
    c.put("raw-valid", &replay_input_bytes(0, &[raw.clone()]));
    c.put(
        "raw-truncated-header",
        &replay_input_bytes(0, &[raw[..40].to_vec()]),
    );
    c.put("raw-empty-file", &replay_input_bytes(0, &[vec![]]));
}

/// A dispenser over a WAL in a scratch directory, driven through its public operations (the
/// code paths the HTTP handlers call), so its snapshots are exactly what the daemon writes.
struct Scenario {
    dir: PathBuf,
    dispenser: Dispenser,
    next_entropy: u64,
}

const COUNTY_A: u32 = 420_502;
const COUNTY_B: u32 = 420_503;
const FACE_FEN: u64 = 500;
const OPENS_MS: i64 = 1_000;
const CLOSES_MS: i64 = 2_000;
const EXPIRES_MS: i64 = 3_000;
/// While the tranches are open.
const OPEN_NOW: UnixMillis = UnixMillis(1_500);

impl Scenario {
    fn new(name: &str) -> Scenario {
        let dir =
            std::env::temp_dir().join(format!("voucherd-gen-corpus-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut options = wal::WalOptions::new(dir.join("wal"));
        options.segment_size_bytes = 1 << 20;
        options.max_batch_bytes = 1 << 18;
        let mut recovered = Recovered::new(DigestKey::new(1, 2));
        let (wal, _) = wal::open(options, |r| recovered.apply(r.seq, r.kind, r.payload))
            .expect("open a fresh WAL");
        // Two county seats far apart: a claim at a seat is in that county.
        let seats = vec![(COUNTY_A, [111.29, 30.69]), (COUNTY_B, [111.35, 30.72])];
        let regions = RegionIndex::Seats(SeatIndex::new(seats, 1e5).expect("seats"));
        let counties = CountyDirectory::new(vec![
            (CountyCode(COUNTY_A), "西陵区".into()),
            (CountyCode(COUNTY_B), "伍家岗区".into()),
        ]);
        let rules = MerchantRules::new(
            vec![CountyCode(COUNTY_A), CountyCode(COUNTY_B)],
            vec!["餐饮".into(), "零售".into()],
            vec!["alipay".into(), "wechat".into()],
        );
        Scenario {
            dir,
            dispenser: Dispenser::new(recovered, counties, rules, regions, wal),
            next_entropy: 0x0123_4567_89AB_CDEF,
        }
    }

    fn entropy(&mut self) -> u64 {
        self.next_entropy = self.next_entropy.wrapping_mul(6_364_136_223_846_793_005) ^ 0x9E37;
        self.next_entropy
    }

    fn campaign(&self, id: &str, policy: RefundPolicy, rollover: Rollover) {
        let spec = CampaignSpec {
            campaign_id: id.into(),
            name: format!("宜昌 {id}"),
            budget_fen: 10_000_000,
            refund_policy: policy,
            rollover,
        };
        self.dispenser.define_campaign(spec).expect("campaign");
    }

    fn tranche(&self, id: &str, campaign: &str, quotas: &[(u32, u32)], industries: &[&str]) {
        let spec = TrancheSpec {
            tranche_id: id.into(),
            campaign_id: campaign.into(),
            opens_at: UnixMillis(OPENS_MS),
            closes_at: UnixMillis(CLOSES_MS),
            expires_at: UnixMillis(EXPIRES_MS),
            face_value_fen: FACE_FEN,
            threshold_fen: 1_000,
            quotas: quotas.iter().map(|(c, q)| (CountyCode(*c), *q)).collect(),
            redeem_anywhere_in_city: industries.is_empty(),
            industries: industries.iter().map(|i| (*i).to_owned()).collect(),
        };
        self.dispenser
            .define_tranche(spec, UnixMillis(0))
            .expect("tranche");
    }

    fn claim(&mut self, tranche: &str, user: &str, county: u32) -> VoucherId {
        let (lng, lat) = if county == COUNTY_A {
            (111.29, 30.69)
        } else {
            (111.35, 30.72)
        };
        let device = format!("dev-{user}");
        let request = format!("req-{user}");
        let id_hash = format!("{:032x}", u128::from(self.next_entropy) * 0x1F3D_5B79);
        let input = ClaimInput {
            tranche_id: tranche,
            identity: IdentityKeys {
                user_id: user,
                id_hash: Some(&id_hash),
                phone_hash: None,
                device_id: Some(&device),
            },
            request_id: &request,
            request_fingerprint: u128::from(self.next_entropy),
            location: Location {
                lng,
                lat,
                crs: Crs::Gcj02,
            },
            entropy: self.entropy(),
        };
        match self.dispenser.claim(&input, OPEN_NOW) {
            ClaimOutcome::Claimed(view, _) => view.id,
            other => panic!("claim by {user}: {other:?}"),
        }
    }

    fn import(&self, ids: &[(&str, u32, &str)]) {
        let rows = ids
            .iter()
            .enumerate()
            .map(|(i, (id, county, industry))| ImportRow {
                line: i as u64 + 2,
                merchant_id: (*id).into(),
                name: format!("小店 {id}"),
                county: county.to_string(),
                industry: (*industry).into(),
                platform: "alipay".into(),
                status: None,
            })
            .collect();
        self.dispenser.import_merchants(rows).expect("import");
    }

    fn redeem(
        &mut self,
        voucher: VoucherId,
        merchant: &str,
        order: &str,
        amount_fen: u64,
    ) -> RedemptionId {
        let facts = self.dispenser.merchant_facts(merchant).expect("merchant");
        let input = RedeemInput {
            voucher_id: voucher,
            code_step: None,
            merchant_id: merchant,
            order_id: order,
            order_amount_fen: amount_fen,
            entropy: self.entropy(),
        };
        let merchant_facts = MerchantFacts {
            active: facts.active,
            county: facts.county,
            industry: &facts.industry,
        };
        match self
            .dispenser
            .redeem(&input, Some(merchant_facts), OPEN_NOW)
        {
            RedeemOutcome::Redeemed(view, _) => view.id,
            other => panic!("redeem: {other:?}"),
        }
    }

    fn refund(&self, redemption: RedemptionId, refund_id: &str, amount_fen: u64, now: UnixMillis) {
        match self
            .dispenser
            .refund(redemption, refund_id, amount_fen, now)
        {
            RefundOutcome::Refunded(..) => {}
            other => panic!("refund: {other:?}"),
        }
    }

    /// The snapshot the daemon would write now, read back.
    fn snapshot(self) -> Vec<u8> {
        let checkpoint = self.dispenser.checkpoint();
        let dir = snapshot::directory(&self.dir);
        let path = snapshot::write(&dir, &checkpoint, UnixMillis(1_777_600_000_000), |seq| {
            self.dispenser.wait_durable_blocking(seq)
        })
        .expect("write snapshot")
        .expect("published");
        let bytes = std::fs::read(&path).expect("read snapshot");
        // It loads into a fresh state, as at a restart.
        let mut fresh = Recovered::new(DigestKey::new(3, 4));
        snapshot::verify(&path, bytes.clone())
            .expect("verifies")
            .apply(&mut fresh)
            .expect("applies");
        fresh.check_invariants();
        drop(checkpoint);
        self.dispenser.wal().shutdown();
        drop(self.dispenser);
        std::fs::remove_dir_all(&self.dir).expect("remove scratch dir");
        bytes
    }
}

/// Snapshots written by a dispenser, small: a few vouchers, merchants and every lifecycle event.
fn snapshots() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    out.push(("empty", Scenario::new("empty").snapshot()));

    let s = Scenario::new("campaign");
    s.campaign("c1", RefundPolicy::RestoreIfValid, Rollover::None);
    out.push(("campaign", s.snapshot()));

    let s = Scenario::new("merchants");
    s.import(&[("m1", COUNTY_A, "餐饮"), ("m2", COUNTY_B, "零售")]);
    s.dispenser
        .set_merchant_status("m2", MerchantStatus::Suspended, OPEN_NOW)
        .expect("suspend");
    out.push(("merchants", s.snapshot()));

    let mut s = Scenario::new("claims");
    s.campaign("c1", RefundPolicy::RestoreIfValid, Rollover::None);
    s.tranche("t1", "c1", &[(COUNTY_A, 3), (COUNTY_B, 2)], &[]);
    s.claim("t1", "u1", COUNTY_A);
    s.dispenser
        .control_tranche("t1", TrancheControl::Pause, OPEN_NOW)
        .expect("pause");
    s.dispenser
        .control_tranche("t1", TrancheControl::Resume, OPEN_NOW)
        .expect("resume");
    s.claim("t1", "u2", COUNTY_B);
    s.claim("t1", "u3", COUNTY_A);
    out.push(("claims", s.snapshot()));

    // Redemption, a partial and a full refund (restores the voucher), revocation of a claimed
    // voucher and of a redeemed one (flagged), a pool draw, and a second campaign whose
    // tranche is redefined before it opens.
    let mut s = Scenario::new("lifecycle");
    s.campaign("c1", RefundPolicy::RestoreIfValid, Rollover::None);
    s.campaign("c2", RefundPolicy::NoRestore, Rollover::NextTranche);
    s.tranche("t1", "c1", &[(COUNTY_A, 3), (COUNTY_B, 2)], &[]);
    s.tranche("t2", "c2", &[(COUNTY_A, 2)], &["餐饮"]);
    s.tranche("t2", "c2", &[(COUNTY_A, 2), (COUNTY_B, 1)], &["餐饮"]);
    s.import(&[("m1", COUNTY_A, "餐饮"), ("m2", COUNTY_B, "零售")]);
    let v1 = s.claim("t1", "u1", COUNTY_A);
    let v2 = s.claim("t1", "u2", COUNTY_B);
    let v3 = s.claim("t1", "u3", COUNTY_A);
    let w1 = s.claim("t2", "u1", COUNTY_A);
    let r1 = s.redeem(v1, "m1", "o-1", 2_000);
    s.refund(r1, "f-1", 500, OPEN_NOW);
    s.refund(r1, "f-2", 1_500, OPEN_NOW);
    let r1 = s.redeem(v1, "m2", "o-2", 1_000);
    let _r2 = s.redeem(v2, "m1", "o-3", 1_200);
    let r3 = s.redeem(w1, "m1", "o-4", 3_000);
    s.refund(r3, "f-3", 3_000, OPEN_NOW);
    let targets = RevokeTargets {
        voucher_ids: vec![v2, v3],
        identity_keys: Vec::new(),
    };
    s.dispenser
        .revoke(&targets, "fraud", "case-1", OPEN_NOW)
        .expect("revoke");
    s.dispenser
        .draw_pool("t1", PoolRequest::Vouchers(1), OPEN_NOW)
        .expect("draw");
    let _ = r1;
    out.push(("lifecycle", s.snapshot()));

    // Settlement at closing and at expiry, a refund after expiry, and a rollover draw.
    let mut s = Scenario::new("settled");
    s.campaign("c1", RefundPolicy::Prorata, Rollover::NextTranche);
    s.tranche("t1", "c1", &[(COUNTY_A, 2), (COUNTY_B, 1)], &[]);
    s.import(&[("m1", COUNTY_A, "餐饮")]);
    let v1 = s.claim("t1", "u1", COUNTY_A);
    s.claim("t1", "u2", COUNTY_A);
    let r1 = s.redeem(v1, "m1", "o-1", 1_000);
    s.refund(r1, "f-1", 300, OPEN_NOW);
    s.dispenser
        .settle_due(UnixMillis(CLOSES_MS))
        .expect("settle at closing");
    s.dispenser
        .settle_due(UnixMillis(EXPIRES_MS))
        .expect("settle at expiry");
    s.refund(r1, "f-2", 700, UnixMillis(EXPIRES_MS + 1));
    s.tranche("t2", "c1", &[(COUNTY_A, 1)], &[]);
    s.dispenser.settle_due(OPEN_NOW).expect("rollover into t2");
    out.push(("settled", s.snapshot()));
    out
}

fn snapshot_load() {
    let c = Corpus::new("snapshot_load");
    let raw = |file: &[u8]| [&[0u8][..], file].concat();
    let resealed = |body: &[u8]| [&[SNAP_FLAG_RESEAL][..], body].concat();
    for (name, file) in snapshots() {
        c.put(&format!("{name}-file"), &raw(&file));
        c.put(&format!("{name}-records"), &resealed(snapshot_body(&file)));
        if name == "lifecycle" {
            let body = snapshot_body(&file);
            c.put("lifecycle-truncated", &raw(&file[..file.len() / 2]));
            let mut flipped = file.clone();
            flipped[file.len() / 3] ^= 0x20;
            c.put("lifecycle-flipped", &raw(&flipped));
            // The records again after themselves: every claim is then a second claim.
            c.put("lifecycle-twice", &resealed(&[body, body].concat()));
            // A covered seq before the records.
            let mut early = vec![SNAP_FLAG_RESEAL | SNAP_FLAG_COVERED_SEQ];
            early.extend_from_slice(&3u64.to_le_bytes());
            early.extend_from_slice(body);
            c.put("lifecycle-covered-early", &early);
        }
    }
}

fn main() {
    // With arguments, only the named targets' seeds are written.
    let only: Vec<String> = std::env::args().skip(1).collect();
    let targets: [(&str, fn()); 5] = [
        ("wal_frame_decode", wal_frame_decode),
        ("journal_decode", journal_decode),
        ("claim_body", claim_body),
        ("wal_replay", wal_replay),
        ("snapshot_load", snapshot_load),
    ];
    for (name, write) in targets {
        if only.is_empty() || only.iter().any(|o| o == name) {
            write();
        }
    }
    println!("seed corpus written to fuzz/corpus/");
}
