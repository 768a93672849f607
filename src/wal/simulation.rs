//! Deterministic crash simulation: a scripted voucher workload through the real core, journal
//! and WAL writer, on the fault-injecting [`SimStorage`], crashed at EVERY mutating storage
//! operation and recovered with the real replay code.
//!
//! For each seed:
//! 1. a script is generated: a campaign, two tranches with small county quotas, then claims
//!    from a pool of identities (some sharing a device, so "the same person" under another
//!    key), retries of earlier requests, reused request IDs, and commit steps in between;
//! 2. a reference run counts the mutating storage operations N (each is a boundary: create,
//!    preallocate, write, sync, rename, remove, directory sync);
//! 3. for every k in 0..=N the script is re-run from scratch and the process "dies" at
//!    operation k (`crash_at_op`). Nothing here uses threads or a clock: the committer's
//!    [`LogWriter`] and the queue's [`Shared`] are driven one step at a time, so a re-run is
//!    the same run, bit for bit, up to k;
//! 4. the disk is crashed several ways (drop all unsynced data, keep it all, and seeded
//!    512-byte sector tearing with a seeded prefix of unsynced directory changes); each image
//!    is checked with `scan`, recovered with `recover` (the body of `open`), and the records
//!    are applied through `dispenser::Recovered` and the core;
//! 5. on each image the simulation also flips a bit in a synced batch that later synced
//!    batches follow (or in a segment header) and asserts recovery REFUSES it as corrupt, and
//!    flips a bit in the unsynced batch and asserts it is truncated as a torn tail, never
//!    replayed;
//! 6. after a successful recovery the workload goes on and crashes again at a seeded point
//!    (sometimes inside the next recovery itself), then recovers and checks once more.
//!
//! Checked after every recovery: every voucher shown to a client (a `201` after its batch's
//! sync, or a retry / `already_claimed` answer after a barrier) exists with the same county
//! and identity; no voucher ID and no identity key appears twice in a tranche; for every
//! county, vouchers counted = issued, issued <= quota and issued + remaining = quota; every
//! replayed record is byte-identical to one the workload appended; and recovery made a
//! bounded number of storage calls.
//!
//! `VOUCHERD_SIM_SEED` sets the first seed (default: from the clock, printed) and
//! `VOUCHERD_SIM_SEEDS` how many consecutive seeds to run (default [`DEFAULT_SEEDS`]).
//! A failure prints the seed, the crash point and the crash mode.
//!
//! The simulated segments are [`SIM_SEGMENT_SIZE_BYTES`] long, below the 1 MiB that
//! `WalOptions` allows, so a short workload rolls across several segments. The writer and
//! replay do not depend on the segment size beyond the header's length check.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};

use tokio::sync::oneshot;

use crate::core::event::{RefundPolicy, Rollover};
use crate::core::{
    CampaignSpec, ClaimCommand, ClaimDecision, CountyCode, Crs, DigestKey, Event, IdentityKeys,
    Location, TrancheBook, TrancheSpec, UnixMillis, VoucherClaimed, VoucherId,
};
use crate::dispenser::Recovered;
use crate::journal;
use crate::wal::committer::{BatchLimits, FatalError, LogWriter, Pending, PreparedBatch, Shared};
use crate::wal::error::OpenError;
use crate::wal::frame::SEGMENT_HEADER_BYTES;
use crate::wal::sim_storage::{CrashMode, Faults, SimDisk, SimRng, SimStorage};
use crate::wal::storage::{SEGMENT_FILE_EXTENSION, segment_file_name};
use crate::wal::{ReplayReport, recover, scan_storage};

/// First seed; unset means "from the clock".
const SEED_ENV: &str = "VOUCHERD_SIM_SEED";
/// Number of consecutive seeds to run.
const SEEDS_ENV: &str = "VOUCHERD_SIM_SEEDS";
/// Seeds per default test run (keeps a debug-build run to a few seconds).
pub const DEFAULT_SEEDS: u64 = 3;
/// Upper bound accepted from `VOUCHERD_SIM_SEEDS`.
const MAX_SEEDS: u64 = 1_000_000;
/// Segment size in the simulation: small, so the workload rolls several times.
pub const SIM_SEGMENT_SIZE_BYTES: u64 = 4096;
/// Encoded bytes per batch, at most (a batch must fit in an empty segment).
const SIM_MAX_BATCH_BYTES: usize = 1536;
/// Records per batch, at most; each seed picks its cap in `1..=` this.
const SIM_MAX_BATCH_RECORDS: usize = 6;
/// Bound on queued records (never reached by the scripts).
const SIM_MAX_QUEUE_RECORDS: usize = 10_000;
/// Claims in a seed's main script.
const CLAIMS_PER_SCRIPT: usize = 200;
/// Claims after the first recovery.
const CLAIMS_AFTER_RECOVERY: usize = 20;
/// Identities in the pool.
const IDENTITIES: usize = 80;
/// Percent of claims that repeat an earlier request exactly (a client retry).
const RETRY_PERCENT: u64 = 20;
/// Percent of claims that reuse an earlier request ID with another body.
const REUSED_REQUEST_ID_PERCENT: u64 = 3;
/// Percent of claims followed by a commit step.
const COMMIT_STEP_PERCENT: u64 = 45;
/// The exploration must reach at least this many crash points per seed (it checks itself).
const MIN_CRASH_POINTS_PER_SEED: u64 = 40;
/// Seeded sector-tearing images per crash point (besides drop-all and keep-all).
const TEAR_IMAGES_PER_CRASH: u64 = 1;
/// The second crash falls within this many storage operations after the first recovery began.
const SECOND_CRASH_WINDOW_OPS: usize = 40;
/// Recovery may make at most this many storage calls per segment, plus the fixed part.
const RECOVERY_CALLS_PER_SEGMENT: u64 = 3;
const RECOVERY_FIXED_CALLS: u64 = 16;
/// Steps allowed to drain the queue at the end of a script.
const MAX_DRAIN_STEPS: usize = 10_000;
/// Violations printed in full.
const MAX_VIOLATIONS_SHOWN: usize = 20;

const OPENS_AT: UnixMillis = UnixMillis(1_700_000_000_000);
const CAMPAIGN_ID: &str = "sim-campaign";
/// More than every tranche of the script releases.
const CAMPAIGN_BUDGET_FEN: u64 = 10_000_000;

/// The two tranches: id and county quotas (small, so counties sell out).
fn tranche_specs() -> Vec<TrancheSpec> {
    let spec = |id: &str, quotas: Vec<(u32, u32)>| TrancheSpec {
        tranche_id: id.to_owned(),
        campaign_id: CAMPAIGN_ID.to_owned(),
        opens_at: OPENS_AT,
        closes_at: OPENS_AT.plus_ms(3_600_000),
        expires_at: OPENS_AT.plus_ms(86_400_000),
        face_value_fen: 2_000,
        threshold_fen: 10_000,
        quotas: quotas
            .into_iter()
            .map(|(county, quota)| (CountyCode(county), quota))
            .collect(),
        redeem_anywhere_in_city: false,
        industries: Vec::new(),
    };
    vec![
        spec("t-a", vec![(420502, 24), (420503, 16), (420504, 8)]),
        spec("t-b", vec![(420502, 12), (420505, 6)]),
    ]
}

/// A county that is in no tranche (the claim is refused without a record).
const STRAY_COUNTY: CountyCode = CountyCode(420506);

#[derive(Debug, Clone)]
struct ClaimSpec {
    tranche: usize,
    identity: usize,
    request_id: String,
    fingerprint: u128,
    county: CountyCode,
    entropy: u64,
}

#[derive(Debug, Clone)]
enum Action {
    Claim(ClaimSpec),
    Commit,
}

/// The identity keys of pool member `n`. Pairs `(2k, 2k+1)` with `k % 3 == 0` share a device,
/// so the second of them is "the same person" as the first under the device key.
struct Identity {
    user_id: String,
    id_hash: Option<String>,
    phone_hash: Option<String>,
    device_id: Option<String>,
}

fn identity(n: usize) -> Identity {
    let pair = n / 2;
    Identity {
        user_id: format!("user-{n}"),
        id_hash: (!n.is_multiple_of(4)).then(|| format!("idh-{n:08x}")),
        phone_hash: (!n.is_multiple_of(3)).then(|| format!("ph-{n:08x}")),
        device_id: Some(if pair.is_multiple_of(3) {
            format!("dev-shared-{pair}")
        } else {
            format!("dev-{n}")
        }),
    }
}

fn script(rng: &mut SimRng, claims: usize, request_prefix: &str) -> Vec<Action> {
    let specs = tranche_specs();
    let mut actions = Vec::with_capacity(claims * 2);
    let mut sent: Vec<ClaimSpec> = Vec::new();
    for i in 0..claims {
        let claim = if !sent.is_empty() && rng.percent(RETRY_PERCENT) {
            sent[rng.range(0, sent.len())].clone()
        } else if !sent.is_empty() && rng.percent(REUSED_REQUEST_ID_PERCENT) {
            let mut reused = sent[rng.range(0, sent.len())].clone();
            reused.fingerprint ^= 1;
            reused
        } else {
            let tranche = rng.range(0, specs.len());
            let quotas = &specs[tranche].quotas;
            let county = if rng.percent(5) {
                STRAY_COUNTY
            } else {
                quotas[rng.range(0, quotas.len())].0
            };
            ClaimSpec {
                tranche,
                identity: rng.range(0, IDENTITIES),
                request_id: format!("{request_prefix}-{i}"),
                fingerprint: u128::from(rng.next_u64()),
                county,
                entropy: rng.next_u64(),
            }
        };
        sent.push(claim.clone());
        actions.push(Action::Claim(claim));
        if rng.percent(COMMIT_STEP_PERCENT) {
            actions.push(Action::Commit);
        }
    }
    actions
}

/// A voucher shown to a client: after a crash it must still be there, exactly so.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shown {
    tranche_id: String,
    id: VoucherId,
    county: CountyCode,
    user_id: String,
    seq: u64,
}

/// The simulated daemon: live core state, the queue, the log writer on the simulated disk.
struct World {
    storage: SimStorage,
    log: Option<LogWriter<SimStorage>>,
    shared: Shared,
    limits: BatchLimits,
    books: Vec<TrancheBook>,
    campaign_defined: bool,
    digest_key: DigestKey,
    now: UnixMillis,
    /// Every record ever queued, by seq (a later run after recovery may reuse lost seqs).
    appended: BTreeMap<u64, (u8, Vec<u8>)>,
    waiting: Vec<(oneshot::Receiver<()>, Shown)>,
    shown: Vec<Shown>,
    synced: Vec<PreparedBatch>,
    in_flight: Option<PreparedBatch>,
    unexpected: Option<String>,
}

impl World {
    fn new(
        storage: SimStorage,
        log: Option<LogWriter<SimStorage>>,
        last_seq: u64,
        max_batch_records: usize,
        digest_key: DigestKey,
    ) -> Self {
        Self {
            storage,
            log,
            shared: Shared::new(last_seq, SIM_MAX_QUEUE_RECORDS),
            limits: BatchLimits {
                max_batch_records,
                max_batch_bytes: SIM_MAX_BATCH_BYTES,
                batch_window: std::time::Duration::ZERO,
            },
            books: Vec::new(),
            campaign_defined: false,
            digest_key,
            now: OPENS_AT.plus_ms(1),
            appended: BTreeMap::new(),
            waiting: Vec::new(),
            shown: Vec::new(),
            synced: Vec::new(),
            in_flight: None,
            unexpected: None,
        }
    }

    fn alive(&self) -> bool {
        self.log.is_some()
    }

    fn append(&mut self, event: &Event) -> Option<(u64, oneshot::Receiver<()>)> {
        let kind = journal::kind_of(event);
        let payload = journal::encode(event);
        let (tx, rx) = oneshot::channel();
        match self.shared.append(kind, payload.clone(), tx) {
            Ok(seq) => {
                self.appended.insert(seq, (kind, payload));
                Some((seq, rx))
            }
            Err(error) => {
                self.unexpected = Some(format!("append refused: {error}"));
                None
            }
        }
    }

    /// Defines whatever of the campaign and tranches the state lacks (as the daemon's seeding
    /// from config does after a restart).
    fn ensure_setup(&mut self) {
        if !self.campaign_defined {
            self.append(&Event::CampaignDefined(CampaignSpec {
                campaign_id: CAMPAIGN_ID.to_owned(),
                name: "simulated campaign".to_owned(),
                budget_fen: CAMPAIGN_BUDGET_FEN,
                refund_policy: RefundPolicy::RestoreIfValid,
                rollover: Rollover::None,
            }));
            self.campaign_defined = true;
        }
        for spec in tranche_specs().into_iter().skip(self.books.len()) {
            let ordinal = self.books.len() as u32;
            let Some((seq, _)) = self.append(&Event::TrancheDefined {
                ordinal,
                spec: spec.clone(),
            }) else {
                return;
            };
            self.books
                .push(TrancheBook::new(ordinal, spec, self.digest_key, seq));
        }
    }

    fn claim(&mut self, spec: &ClaimSpec) {
        self.now = self.now.plus_ms(1);
        let id = identity(spec.identity);
        let command = ClaimCommand {
            identity: IdentityKeys {
                user_id: &id.user_id,
                id_hash: id.id_hash.as_deref(),
                phone_hash: id.phone_hash.as_deref(),
                device_id: id.device_id.as_deref(),
            },
            request_id: &spec.request_id,
            request_fingerprint: spec.fingerprint,
            county: Some(spec.county),
            location: Location {
                lng: 111.29,
                lat: 30.70,
                crs: Crs::Gcj02,
            },
            entropy: spec.entropy,
        };
        let Some(book) = self.books.get(spec.tranche) else {
            return;
        };
        match book.decide_claim(&command, self.now) {
            ClaimDecision::Issue { event, digests } => {
                let Some((seq, rx)) = self.append(&Event::VoucherClaimed(event.clone())) else {
                    return;
                };
                let book = &mut self.books[spec.tranche];
                let index = book.apply_claim(event, &digests, seq);
                let shown = shown(book, index);
                self.waiting.push((rx, shown));
            }
            ClaimDecision::Replay { voucher_index }
            | ClaimDecision::AlreadyClaimed { voucher_index } => {
                let shown = shown(book, voucher_index);
                if shown.seq <= self.shared.durable_seq() {
                    self.shown.push(shown);
                } else {
                    let (tx, rx) = oneshot::channel();
                    match self.shared.barrier(tx) {
                        Ok(()) => self.waiting.push((rx, shown)),
                        Err(error) => self.unexpected = Some(format!("barrier refused: {error}")),
                    }
                }
            }
            ClaimDecision::Refused(_) => {}
        }
    }

    /// One commit step: takes what is queued (up to the caps), writes and syncs it, fires
    /// completions and barriers. Returns false once the process is dead.
    fn step(&mut self) -> bool {
        let Some(log) = self.log.as_mut() else {
            return false;
        };
        let mut batch: Vec<Pending> = Vec::new();
        self.shared.take_ready(&self.limits, &mut batch);
        if batch.is_empty() {
            return true;
        }
        let result = log.prepare(&batch).and_then(|prepared| {
            self.in_flight = Some(prepared);
            log.write_and_sync(&prepared).map(|()| prepared)
        });
        match result {
            Ok(prepared) => {
                self.in_flight = None;
                self.synced.push(prepared);
                self.shared.complete(&mut batch, prepared.last_seq);
                self.shared.fire_barriers();
                self.collect_answers();
                true
            }
            Err(error) => {
                self.die(&error);
                false
            }
        }
    }

    fn die(&mut self, error: &FatalError) {
        if !self.storage.with_disk(|d| d.crashed()) {
            self.unexpected = Some(format!("fatal error without a crash: {error}"));
        }
        self.log = None;
    }

    fn collect_answers(&mut self) {
        let mut still_waiting = Vec::new();
        for (mut rx, shown) in self.waiting.drain(..) {
            match rx.try_recv() {
                Ok(()) => self.shown.push(shown),
                Err(oneshot::error::TryRecvError::Empty) => still_waiting.push((rx, shown)),
                Err(oneshot::error::TryRecvError::Closed) => {}
            }
        }
        self.waiting = still_waiting;
    }

    fn run(&mut self, actions: &[Action]) {
        for action in actions {
            if !self.alive() {
                return;
            }
            match action {
                Action::Claim(spec) => self.claim(spec),
                Action::Commit => {
                    self.step();
                }
            }
        }
        for _ in 0..MAX_DRAIN_STEPS {
            if !self.alive() || self.shared.durable_seq() + 1 == self.shared.next_seq() {
                return;
            }
            self.step();
        }
        self.unexpected = Some("the queue did not drain".to_owned());
    }
}

fn shown(book: &TrancheBook, index: u32) -> Shown {
    let voucher = book.voucher(index);
    Shown {
        tranche_id: book.spec().tranche_id.clone(),
        id: voucher.id(),
        county: voucher.county(),
        user_id: voucher.claim.user_id().to_owned(),
        seq: voucher.seq,
    }
}

/// State rebuilt from a recovered log: through `dispenser::Recovered` (the daemon's path, with
/// its assertions) and, for inspection, through the core directly.
struct Rebuilt {
    recovered: Recovered,
    digest_key: DigestKey,
    campaign_defined: bool,
    books: Vec<TrancheBook>,
    claims: Vec<VoucherClaimed>,
    records: Vec<(u64, u8, Vec<u8>)>,
}

impl Rebuilt {
    fn new(digest_key: DigestKey) -> Self {
        Self {
            recovered: Recovered::new(digest_key),
            digest_key,
            campaign_defined: false,
            books: Vec::new(),
            claims: Vec::new(),
            records: Vec::new(),
        }
    }

    fn apply(&mut self, seq: u64, kind: u8, payload: &[u8]) -> Result<(), String> {
        // In runs, as the daemon replays (`finish` is called once the log is read).
        self.recovered
            .apply_deferred(seq, kind, payload)
            .map_err(|e| e.to_string())?;
        self.records.push((seq, kind, payload.to_vec()));
        match journal::decode(kind, payload).map_err(|e| format!("seq {seq}: {e}"))? {
            Event::CampaignDefined(_) => self.campaign_defined = true,
            Event::TrancheDefined { ordinal, spec } => {
                if ordinal as usize != self.books.len() {
                    return Err(format!("seq {seq}: tranche ordinal {ordinal} out of order"));
                }
                self.books
                    .push(TrancheBook::new(ordinal, spec, self.digest_key, seq));
            }
            Event::TrancheControlled { .. } => {
                return Err(format!("seq {seq}: the script never pauses"));
            }
            other @ (Event::VoucherRedeemed(_)
            | Event::RedemptionRefunded(_)
            | Event::TrancheSettled { .. }
            | Event::VouchersRevoked(_)
            | Event::PoolDrawn(_)
            | Event::MerchantsImported(_)
            | Event::MerchantStatusChanged(_)) => {
                return Err(format!(
                    "seq {seq}: the script writes no {} record",
                    journal::kind_of(&other)
                ));
            }
            Event::VoucherClaimed(claim) => {
                let book = self
                    .books
                    .iter_mut()
                    .find(|b| b.spec().tranche_id == claim.tranche_id())
                    .ok_or_else(|| format!("seq {seq}: claim in unknown tranche"))?;
                book.replay_claim(claim.clone(), seq)
                    .map_err(|e| format!("seq {seq}: {e}"))?;
                self.claims.push(claim);
            }
        }
        Ok(())
    }
}

/// The checks listed in the module doc. Returns every problem found.
fn check(
    rebuilt: &Rebuilt,
    world_appended: &BTreeMap<u64, (u8, Vec<u8>)>,
    shown: &[Shown],
) -> Vec<String> {
    let mut problems = Vec::new();
    for (seq, kind, payload) in &rebuilt.records {
        if world_appended.get(seq) != Some(&(*kind, payload.clone())) {
            problems.push(format!("replayed record {seq} was never appended as such"));
        }
    }
    for s in shown {
        let found = rebuilt
            .books
            .iter()
            .find(|b| b.spec().tranche_id == s.tranche_id)
            .and_then(|b| b.find_voucher(s.id));
        match found {
            None => problems.push(format!("acknowledged voucher lost: {s:?}")),
            Some(v) if v.county() != s.county || v.claim.user_id() != s.user_id => {
                problems.push(format!("acknowledged voucher changed: {s:?} became {v:?}"));
            }
            Some(_) => {}
        }
    }
    for book in &rebuilt.books {
        let tranche = &book.spec().tranche_id;
        let mut ids = HashSet::new();
        let mut per_county: BTreeMap<CountyCode, u32> = BTreeMap::new();
        for v in book.vouchers() {
            if !ids.insert(v.id()) {
                problems.push(format!("{tranche}: voucher ID {:?} issued twice", v.id()));
            }
            *per_county.entry(v.county()).or_default() += 1;
        }
        let mut keys = HashSet::new();
        for c in rebuilt.claims.iter().filter(|c| c.tranche_id() == tranche) {
            let mut identity_keys = vec![("user", c.user_id().to_owned())];
            identity_keys.extend(c.id_hash().map(|k| ("id", k.to_owned())));
            identity_keys.extend(c.phone_hash().map(|k| ("phone", k.to_owned())));
            identity_keys.extend(c.device_id().map(|k| ("device", k.to_owned())));
            for key in identity_keys {
                if !keys.insert(key.clone()) {
                    problems.push(format!(
                        "{tranche}: identity key {key:?} holds two vouchers"
                    ));
                }
            }
        }
        for stock in book.counties() {
            let counted = per_county.remove(&stock.county).unwrap_or(0);
            if counted != stock.issued
                || stock.issued > stock.quota
                || stock.issued + stock.remaining() != stock.quota
            {
                problems.push(format!(
                    "{tranche} county {}: counted {counted}, {stock:?}",
                    stock.county.0
                ));
            }
        }
        if !per_county.is_empty() {
            problems.push(format!("{tranche}: vouchers outside its counties"));
        }
    }
    problems
}

/// A recovered world, ready to go on.
struct Recovery {
    world: World,
    report: ReplayReport,
}

/// Scans `image` (read-only), recovers it, rebuilds the state and checks it against `shown`.
/// `faults` are installed for the recovery itself (to crash inside it); `Err` carries the
/// problems, or `None` inside if the recovery died of an injected crash.
fn recover_and_check(
    storage: &SimStorage,
    faults: Faults,
    appended: &BTreeMap<u64, (u8, Vec<u8>)>,
    shown: &[Shown],
    digest_key: DigestKey,
    max_batch_records: usize,
) -> Result<Recovery, Option<Vec<String>>> {
    let before: Vec<(String, Vec<u8>)> = disk_files(storage);
    let mut scanned = 0u64;
    let scanned_report = scan_storage(storage, |_| {
        scanned += 1;
        Ok::<(), String>(())
    });
    if disk_files(storage) != before {
        return Err(Some(vec!["scan modified the disk".to_owned()]));
    }
    let scanned_report = match scanned_report {
        Ok(report) => report,
        Err(error) => return Err(Some(vec![format!("scan refused the log: {error}")])),
    };
    storage.with_disk(|d| d.set_faults(faults));
    let calls_before = storage.with_disk(|d| d.calls());
    let mut rebuilt = Rebuilt::new(digest_key);
    let recovered = recover(storage.clone(), SIM_SEGMENT_SIZE_BYTES, |r| {
        rebuilt.apply(r.seq, r.kind, r.payload)
    });
    let calls = storage.with_disk(|d| d.calls()) - calls_before;
    let (log, report) = match recovered {
        Ok(pair) => pair,
        Err(_) if storage.with_disk(|d| d.crashed()) => return Err(None),
        Err(error) => return Err(Some(vec![format!("recovery failed: {error}")])),
    };
    // What the daemon does next: the last run, the ledgers, the invariants (asserted).
    if let Err(error) = rebuilt
        .recovered
        .finish()
        .and_then(|()| rebuilt.recovered.check_ledgers())
    {
        return Err(Some(vec![format!("recovery failed: {error}")]));
    }
    rebuilt.recovered.check_invariants();
    let mut problems = check(&rebuilt, appended, shown);
    if report.last_seq != scanned_report.last_seq
        || report.truncated_tail_bytes != scanned_report.truncated_tail_bytes
        || scanned != report.records
    {
        problems.push(format!(
            "scan {scanned_report:?} and open {report:?} disagree"
        ));
    }
    let bound =
        RECOVERY_CALLS_PER_SEGMENT * (u64::from(report.segments) + 1) + RECOVERY_FIXED_CALLS;
    if calls > bound {
        problems.push(format!(
            "recovery made {calls} storage calls, bound {bound}"
        ));
    }
    if !problems.is_empty() {
        return Err(Some(problems));
    }
    let mut world = World::new(
        storage.clone(),
        Some(log),
        report.last_seq,
        max_batch_records,
        digest_key,
    );
    world.books = rebuilt.books;
    world.campaign_defined = rebuilt.campaign_defined;
    world.appended = appended
        .range(..=report.last_seq)
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    world.shown = shown.to_vec();
    Ok(Recovery { world, report })
}

fn disk_files(storage: &SimStorage) -> Vec<(String, Vec<u8>)> {
    storage.with_disk(|d| {
        d.names()
            .into_iter()
            .map(|n| {
                let bytes = d.contents(&n).map(<[u8]>::to_vec).unwrap_or_default();
                (n, bytes)
            })
            .collect()
    })
}

/// Totals over a simulation run.
#[derive(Debug, Default)]
pub struct SimReport {
    pub seeds: u64,
    pub crash_points: u64,
    pub crash_states: u64,
    pub synced_flips_refused: u64,
    pub unsynced_flips_truncated: u64,
    pub recoveries_interrupted: u64,
    pub torn_tails_erased: u64,
    pub acknowledged_checked: u64,
    pub violations: Vec<String>,
}

struct SeedRun {
    seed: u64,
    rng: SimRng,
    max_batch_records: usize,
    digest_key: DigestKey,
    recovery_key: DigestKey,
    actions: Vec<Action>,
}

impl SeedRun {
    fn new(seed: u64) -> Self {
        let mut rng = SimRng::new(seed);
        let max_batch_records = rng.range(1, SIM_MAX_BATCH_RECORDS + 1);
        let digest_key = DigestKey::new(rng.next_u64(), rng.next_u64());
        // Replay must not depend on the live process's digest key.
        let recovery_key = DigestKey::new(rng.next_u64(), rng.next_u64());
        let actions = script(&mut rng, CLAIMS_PER_SCRIPT, "req");
        Self {
            seed,
            rng,
            max_batch_records,
            digest_key,
            recovery_key,
            actions,
        }
    }

    /// Runs the script from an empty disk; the process dies at mutating op `crash_at_op`.
    fn execute(&self, crash_at_op: Option<u64>) -> World {
        let storage = SimStorage::default();
        storage.with_disk(|d| {
            d.set_faults(Faults {
                crash_at_op,
                ..Faults::default()
            })
        });
        let opened = recover(storage.clone(), SIM_SEGMENT_SIZE_BYTES, |_| {
            Ok::<(), String>(())
        });
        let (log, unexpected) = match opened {
            Ok((log, _)) => (Some(log), None),
            Err(_) if storage.with_disk(|d| d.crashed()) => (None, None),
            Err(error) => (None, Some(format!("opening an empty disk failed: {error}"))),
        };
        let mut world = World::new(storage, log, 0, self.max_batch_records, self.digest_key);
        world.unexpected = unexpected;
        if world.alive() {
            world.ensure_setup();
            world.run(&self.actions);
        }
        world
    }

    fn modes(&self, crash_point: u64) -> Vec<CrashMode> {
        let mut modes = vec![
            CrashMode::DropUnsynced,
            CrashMode::KeepUnsynced,
            CrashMode::ProcessOnly,
        ];
        for variant in 0..TEAR_IMAGES_PER_CRASH {
            let seed = self.rng.fork(crash_point << 8 | variant).next_u64();
            modes.push(CrashMode::TearSectors { seed });
        }
        modes
    }

    fn run(&self, report: &mut SimReport) {
        let total_ops = self.execute(None).storage.with_disk(|d| d.mutating_ops());
        for crash_point in 0..=total_ops {
            let crash_at = (crash_point < total_ops).then_some(crash_point);
            let world = self.execute(crash_at);
            report.crash_points += 1;
            if let Some(problem) = &world.unexpected {
                self.violation(report, crash_point, None, problem);
                continue;
            }
            let pre_crash = world.storage.snapshot();
            let modes = self.modes(crash_point);
            // The deeper checks (bit flips, a crash inside recovery, a second crash) run on
            // one of the images, chosen by the seed; every image is recovered and checked.
            let deep = self.rng.fork(crash_point).range(0, modes.len());
            for (index, mode) in modes.into_iter().enumerate() {
                let mut image = pre_crash.clone();
                image.crash(mode);
                let outcome = catch_unwind(AssertUnwindSafe(|| {
                    self.explore_image(&world, image, mode, crash_point, index == deep, report)
                }));
                if outcome.is_err() {
                    self.violation(report, crash_point, Some(mode), "panicked (see above)");
                }
            }
        }
        report.seeds += 1;
    }

    fn violation(&self, report: &mut SimReport, point: u64, mode: Option<CrashMode>, what: &str) {
        report.violations.push(format!(
            "{SEED_ENV}={} crash at op {point} {mode:?}: {what}",
            self.seed
        ));
    }

    /// Everything done with one crashed image.
    fn explore_image(
        &self,
        world: &World,
        image: SimDisk,
        mode: CrashMode,
        point: u64,
        deep: bool,
        report: &mut SimReport,
    ) {
        let mut rng = self.rng.fork(point.wrapping_mul(31) ^ mode_salt(mode));
        if deep {
            self.check_synced_flip(world, &image, &mut rng, point, mode, report);
            self.check_unsynced_flip(world, &image, &mut rng, point, mode, report);
            self.check_interrupted_recovery(world, &image, &mut rng, point, mode, report);
        }
        let Some(recovery) = self.recover_image(image, world, point, mode, "recovery", report)
        else {
            return;
        };
        if recovery.report.truncated_tail_bytes > 0 {
            report.torn_tails_erased += 1;
        }
        if mode == CrashMode::ProcessOnly {
            self.check_power_loss_after_recovery(world, &recovery, point, report);
        }
        if deep {
            self.continue_and_crash_again(recovery, &mut rng, point, mode, report);
        }
    }

    /// A bit flipped in a synced batch that later synced batches follow, or in a segment
    /// header, must make recovery refuse the log.
    fn check_synced_flip(
        &self,
        world: &World,
        image: &SimDisk,
        rng: &mut SimRng,
        point: u64,
        mode: CrashMode,
        report: &mut SimReport,
    ) {
        let mut targets: Vec<(String, usize, usize)> = world
            .synced
            .iter()
            .rev()
            .skip(1)
            .map(|b| {
                (
                    segment_file_name(b.segment_index),
                    b.offset_bytes,
                    b.len_bytes,
                )
            })
            .collect();
        targets.extend(
            image
                .names()
                .into_iter()
                .filter(|n| n.ends_with(&format!(".{SEGMENT_FILE_EXTENSION}")))
                .map(|n| (n, 0, SEGMENT_HEADER_BYTES)),
        );
        if targets.is_empty() {
            return;
        }
        let (name, offset, len) = targets[rng.range(0, targets.len())].clone();
        let byte = offset + rng.range(0, len);
        let mut flipped = image.clone();
        if !flipped.flip_bit(&name, byte, rng.range(0, 8) as u8) {
            self.violation(
                report,
                point,
                Some(mode),
                &format!("no byte {byte} in {name}"),
            );
            return;
        }
        let storage = SimStorage::from_disk(flipped);
        let scanned = scan_storage(&storage, |_| Ok::<(), String>(()));
        let opened = recover(storage, SIM_SEGMENT_SIZE_BYTES, |_| Ok::<(), String>(()));
        match (scanned, opened) {
            (Err(OpenError::Corrupt { .. }), Err(OpenError::Corrupt { .. })) => {
                report.synced_flips_refused += 1;
            }
            (scanned, opened) => self.violation(
                report,
                point,
                Some(mode),
                &format!(
                    "bit flip in synced data ({name} byte {byte}) not refused: scan {:?}, open {:?}",
                    scanned.map(|r| r.last_seq).map_err(|e| e.to_string()),
                    opened.map(|(_, r)| r.last_seq).map_err(|e| e.to_string()),
                ),
            ),
        }
    }

    /// A bit flipped in the batch that was being written (unsynced) is a torn tail: recovery
    /// succeeds, keeps everything acknowledged and does not replay that batch.
    fn check_unsynced_flip(
        &self,
        world: &World,
        image: &SimDisk,
        rng: &mut SimRng,
        point: u64,
        mode: CrashMode,
        report: &mut SimReport,
    ) {
        let Some(batch) = world.in_flight else {
            return;
        };
        let name = segment_file_name(batch.segment_index);
        let byte = batch.offset_bytes + rng.range(0, batch.len_bytes);
        let mut flipped = image.clone();
        if !flipped.flip_bit(&name, byte, rng.range(0, 8) as u8) {
            return; // The segment itself did not survive the crash.
        }
        match recover_and_check(
            &SimStorage::from_disk(flipped),
            Faults::default(),
            &world.appended,
            &world.shown,
            self.recovery_key,
            self.max_batch_records,
        ) {
            Ok(recovery) if recovery.report.last_seq < batch.first_seq => {
                report.unsynced_flips_truncated += 1;
            }
            Ok(recovery) => self.violation(
                report,
                point,
                Some(mode),
                &format!(
                    "flipped unsynced batch {}..={} replayed (last seq {})",
                    batch.first_seq, batch.last_seq, recovery.report.last_seq
                ),
            ),
            Err(problems) => {
                for p in problems.unwrap_or_default() {
                    self.violation(report, point, Some(mode), &format!("unsynced flip: {p}"));
                }
            }
        }
    }

    /// The machine crashes again DURING recovery (e.g. while the torn tail is being zeroed);
    /// the next recovery must still succeed and pass the checks.
    fn check_interrupted_recovery(
        &self,
        world: &World,
        image: &SimDisk,
        rng: &mut SimRng,
        point: u64,
        mode: CrashMode,
        report: &mut SimReport,
    ) {
        let crash_at_op = image.mutating_ops() + rng.range(0, 4) as u64;
        let faults = Faults {
            crash_at_op: Some(crash_at_op),
            ..Faults::default()
        };
        let storage = SimStorage::from_disk(image.clone());
        match recover_and_check(
            &storage,
            faults,
            &world.appended,
            &world.shown,
            self.recovery_key,
            self.max_batch_records,
        ) {
            // Recovery did fewer mutating operations than the crash point: nothing to test.
            Ok(_) => {}
            Err(None) => {
                report.recoveries_interrupted += 1;
                let mut again = storage.snapshot();
                again.crash(CrashMode::TearSectors {
                    seed: rng.next_u64(),
                });
                report.crash_states += 1;
                if let Err(problems) = recover_and_check(
                    &SimStorage::from_disk(again),
                    Faults::default(),
                    &world.appended,
                    &world.shown,
                    self.recovery_key,
                    self.max_batch_records,
                ) {
                    for p in problems.unwrap_or_else(|| vec!["died without a fault".to_owned()]) {
                        self.violation(
                            report,
                            point,
                            Some(mode),
                            &format!("after an interrupted recovery: {p}"),
                        );
                    }
                }
            }
            Err(Some(problems)) => {
                for p in problems {
                    self.violation(
                        report,
                        point,
                        Some(mode),
                        &format!("interrupted recovery: {p}"),
                    );
                }
            }
        }
    }

    /// Everything a recovery replayed is answered as durable from then on, so a power loss
    /// right after the recovery (the previous crash having been the process's only, its
    /// unsynced batch still in the page cache) must keep all of it.
    fn check_power_loss_after_recovery(
        &self,
        world: &World,
        recovery: &Recovery,
        point: u64,
        report: &mut SimReport,
    ) {
        let mut image = recovery.world.storage.snapshot();
        image.crash(CrashMode::DropUnsynced);
        let mode = CrashMode::ProcessOnly;
        let what = "power loss after recovery";
        if let Some(again) = self.recover_image(image, world, point, mode, what, report)
            && again.report.last_seq < recovery.report.last_seq
        {
            let lost = format!(
                "a recovery replayed through seq {}, then a power loss kept only {}",
                recovery.report.last_seq, again.report.last_seq
            );
            self.violation(report, point, Some(mode), &lost);
        }
    }

    /// Recovers `image`, a crash of `world` (whose records and answers it checks), counting
    /// the state and reporting each problem as a violation that starts with `what`.
    fn recover_image(
        &self,
        image: SimDisk,
        world: &World,
        point: u64,
        mode: CrashMode,
        what: &str,
        report: &mut SimReport,
    ) -> Option<Recovery> {
        report.crash_states += 1;
        match recover_and_check(
            &SimStorage::from_disk(image),
            Faults::default(),
            &world.appended,
            &world.shown,
            self.recovery_key,
            self.max_batch_records,
        ) {
            Ok(recovery) => {
                report.acknowledged_checked += world.shown.len() as u64;
                Some(recovery)
            }
            Err(problems) => {
                for p in problems.unwrap_or_else(|| vec!["died without a fault".to_owned()]) {
                    self.violation(report, point, Some(mode), &format!("{what}: {p}"));
                }
                None
            }
        }
    }

    /// After recovery the daemon goes on (redefining lost setup, more claims, retries of the
    /// old ones), then crashes again at a seeded point; the next recovery is checked too.
    fn continue_and_crash_again(
        &self,
        recovery: Recovery,
        rng: &mut SimRng,
        point: u64,
        mode: CrashMode,
        report: &mut SimReport,
    ) {
        let mut world = recovery.world;
        let crash_at = world.storage.with_disk(|d| d.mutating_ops())
            + rng.range(0, SECOND_CRASH_WINDOW_OPS) as u64;
        world.storage.with_disk(|d| {
            d.set_faults(Faults {
                crash_at_op: Some(crash_at),
                ..Faults::default()
            })
        });
        let mut actions = script(rng, CLAIMS_AFTER_RECOVERY, "after");
        // Retries of the first script's requests, answered from the recovered state.
        for action in self.actions.iter().take(CLAIMS_AFTER_RECOVERY) {
            actions.push(action.clone());
        }
        world.ensure_setup();
        world.run(&actions);
        if let Some(problem) = &world.unexpected {
            self.violation(
                report,
                point,
                Some(mode),
                &format!("after recovery: {problem}"),
            );
            return;
        }
        world.log = None;
        let mut image = world.storage.snapshot();
        image.crash(CrashMode::TearSectors {
            seed: rng.next_u64(),
        });
        self.recover_image(image, &world, point, mode, "second crash", report);
    }
}

fn mode_salt(mode: CrashMode) -> u64 {
    match mode {
        CrashMode::DropUnsynced => 1,
        CrashMode::KeepUnsynced => 2,
        CrashMode::ProcessOnly => 3,
        CrashMode::TearSectors { seed } => seed,
    }
}

/// Runs `count` seeds starting at `first`.
pub fn simulate(first: u64, count: u64) -> SimReport {
    let mut report = SimReport::default();
    for seed in first..first.saturating_add(count) {
        SeedRun::new(seed).run(&mut report);
    }
    report
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn crash_at_every_boundary_loses_no_acknowledged_voucher() {
    let first = env_u64(SEED_ENV).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let count = env_u64(SEEDS_ENV)
        .unwrap_or(DEFAULT_SEEDS)
        .clamp(1, MAX_SEEDS);
    println!("wal simulation: {SEED_ENV}={first} {SEEDS_ENV}={count}");
    let report = simulate(first, count);
    println!(
        "wal simulation: seeds {}, crash points {}, crash states explored {}, synced bit flips refused {}, \
         unsynced bit flips truncated {}, recoveries interrupted {}, torn tails erased {}, \
         acknowledged vouchers checked {}, violations {}",
        report.seeds,
        report.crash_points,
        report.crash_states,
        report.synced_flips_refused,
        report.unsynced_flips_truncated,
        report.recoveries_interrupted,
        report.torn_tails_erased,
        report.acknowledged_checked,
        report.violations.len()
    );
    for violation in report.violations.iter().take(MAX_VIOLATIONS_SHOWN) {
        println!("VIOLATION {violation}");
    }
    assert!(
        report.violations.is_empty(),
        "{} violations; replay with {SEED_ENV}={first} {SEEDS_ENV}={count}",
        report.violations.len()
    );
    // The exploration must actually exercise what it claims to.
    assert!(
        report.crash_points >= MIN_CRASH_POINTS_PER_SEED * count,
        "{report:?}"
    );
    assert!(report.synced_flips_refused > 0, "{report:?}");
    assert!(report.unsynced_flips_truncated > 0, "{report:?}");
    assert!(report.torn_tails_erased > 0, "{report:?}");
}

#[test]
fn a_seed_replays_exactly() {
    let seed = env_u64(SEED_ENV).unwrap_or(42);
    let run = SeedRun::new(seed);
    let fingerprint = |world: &World| {
        (
            world.storage.with_disk(|d| d.trace().to_vec()),
            disk_files(&world.storage),
            world.shown.clone(),
            world.appended.clone(),
        )
    };
    let first = run.execute(None);
    let second = SeedRun::new(seed).execute(None);
    assert!(first.unexpected.is_none(), "{:?}", first.unexpected);
    assert!(!first.shown.is_empty());
    assert!(
        fingerprint(&first) == fingerprint(&second),
        "seed {seed} did not replay exactly"
    );
    // And the workload does what it says: it rolls across segments and sells counties out.
    let segments = disk_files(&first.storage)
        .iter()
        .filter(|(n, _)| n.ends_with(".wal"))
        .count();
    assert!(segments >= 3, "only {segments} segments");
    assert!(
        first
            .books
            .iter()
            .any(|b| b.counties().iter().any(|c| c.remaining() == 0)),
        "no county sold out"
    );
    let used_seqs: BTreeSet<u64> = first.appended.keys().copied().collect();
    assert_eq!(used_seqs.len() as u64, first.shared.durable_seq());
}
