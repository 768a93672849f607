//! Writes the seed corpus of every fuzz target into `fuzz/corpus/<target>/`: valid encodings
//! made with the daemon's own encoders, plus edge cases. Deterministic, so rerunning it only
//! rewrites the same files.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example gen_corpus`

use std::path::{Path, PathBuf};

use voucherd::core::{
    CampaignSpec, CountyCode, Crs, Event, Location, TrancheControl, TrancheSpec, UnixMillis,
    VoucherClaimed,
};
use voucherd::journal::{self, MAX_FIELD_BYTES};
use voucherd::wal::frame::{self, SEGMENT_HEADER_BYTES, SegmentHeader};
use voucherd_fuzz::{
    FLAG_BAD_NAME, FLAG_EXTRA_FILES, FLAG_FAIL_CALLBACK, FLAG_FIX_HEADERS, FLAG_GAP,
    FLAG_PAD_PAGES, encode_batch, replay_input_bytes,
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
    VoucherClaimed {
        tranche_id: "t-2026-05-01".into(),
        voucher_random: 0x0123_4567_89AB_CDEF,
        county: CountyCode(420_502),
        claimed_at: UnixMillis(1_777_600_000_000),
        user_id: user.into(),
        id_hash: Some("ab".repeat(32)),
        phone_hash: Some("0f".repeat(16)),
        device_id: Some("ios-AE12".into()),
        request_id: request.into(),
        request_fingerprint: 0xDEAD_BEEF_0000_0000_0000_0000_CAFE_F00D,
        location: Location {
            lng,
            lat,
            crs: Crs::Gcj02,
        },
    }
}

fn events() -> Vec<(&'static str, Event)> {
    let mut minimal = claim("u", "r", 0.0, 0.0);
    minimal.id_hash = None;
    minimal.phone_hash = None;
    minimal.device_id = None;
    minimal.location.crs = Crs::Wgs84;
    vec![
        (
            "campaign",
            Event::CampaignDefined(CampaignSpec {
                campaign_id: "yc-2026".into(),
                name: "宜昌消费券".into(),
            }),
        ),
        (
            "campaign-long-name",
            Event::CampaignDefined(CampaignSpec {
                campaign_id: "c".into(),
                name: "x".repeat(MAX_FIELD_BYTES),
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

fn main() {
    wal_frame_decode();
    journal_decode();
    claim_body();
    wal_replay();
    println!("seed corpus written to fuzz/corpus/");
}
