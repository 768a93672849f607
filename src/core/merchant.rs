//! The merchant registry (商户): who may accept vouchers, where, in which
//! industry and through which platform, and whether they are suspended.
//!
//! Merchants arrive in bulk imports and are never edited or deleted; only
//! their status moves between active and suspended. Every change follows the
//! core's two steps: `decide_import` / `decide_status` check a request against
//! the registry and return the change (or every row error), then
//! `apply_import` / `apply_status` perform it, live and on replay alike.
//!
//! Merchants are stored in chunks of [`CHUNK_MERCHANTS`] behind `Arc`s, so a
//! checkpoint takes a consistent copy of millions of them by cloning the chunk
//! pointers ([`MerchantRegistry::share`]); a later change to a shared chunk
//! copies that one chunk first (copy on write). Two indexes point at them: a
//! hash table of ordinals (4 bytes a merchant, no copy of the ID) answers
//! `get`, the hot lookup; a sorted map by `merchant_id` gives listings a
//! stable order.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use hashbrown::HashTable;
use xxhash_rust::xxh3::xxh3_64;

use super::event::{MerchantStatusChanged, MerchantsImported};
use super::time::UnixMillis;
use super::tranche::CountyCode;

/// Most merchants the registry holds.
pub const MAX_MERCHANTS: usize = 5_000_000;
/// Most rows in one import.
pub const MAX_IMPORT_ROWS: usize = 100_000;
/// Longest merchant ID: IDs share the rules of campaign and tranche IDs.
pub const MAX_MERCHANT_ID_BYTES: usize = 64;
/// Longest merchant name (about 66 Chinese characters).
pub const MAX_MERCHANT_NAME_BYTES: usize = 200;
/// Longest industry or platform name.
pub const MAX_TERM_BYTES: usize = 64;
/// Most industries, and most platforms, a configuration may list.
pub const MAX_INDUSTRIES: usize = 64;
pub const MAX_PLATFORMS: usize = 64;
/// Row errors listed in one answer; the total is always counted.
pub const MAX_ROW_ERRORS_LISTED: usize = 1_000;
/// Largest page of a listing, and the page size when none is asked for.
pub const MAX_PAGE_SIZE: usize = 1_000;
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Most merchants one listing page looks at. A selective filter may return a
/// short (even empty) page with a `next_page_token`, so one request never
/// holds the registry's read lock for a scan of millions.
pub const MAX_LIST_SCAN_MERCHANTS: usize = 100_000;
/// Merchants per storage chunk; a copy on write copies at most this many.
pub const CHUNK_MERCHANTS: usize = 4_096;

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MerchantStatus {
    Active,
    Suspended,
}

impl MerchantStatus {
    pub const ALL: [MerchantStatus; 2] = [MerchantStatus::Active, MerchantStatus::Suspended];

    pub fn as_str(self) -> &'static str {
        match self {
            MerchantStatus::Active => "active",
            MerchantStatus::Suspended => "suspended",
        }
    }

    pub fn parse(text: &str) -> Option<MerchantStatus> {
        match text {
            "active" => Some(MerchantStatus::Active),
            "suspended" => Some(MerchantStatus::Suspended),
            _ => None,
        }
    }
}

/// One merchant as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merchant {
    pub merchant_id: String,
    pub name: String,
    pub county: CountyCode,
    pub industry: String,
    pub platform: String,
    pub status: MerchantStatus,
}

impl Merchant {
    pub fn is_active(&self) -> bool {
        self.status == MerchantStatus::Active
    }
}

/// Merchant IDs: 1 to 64 of `A-Z a-z 0-9 _ - .` (safe in URLs and file names).
pub fn check_merchant_id(text: &str) -> Result<(), String> {
    super::catalog::check_object_id(text)
}

pub fn check_merchant_name(text: &str) -> Result<(), String> {
    if text.trim().is_empty() || text.len() > MAX_MERCHANT_NAME_BYTES {
        return Err(format!(
            "must be 1 to {MAX_MERCHANT_NAME_BYTES} bytes and not blank"
        ));
    }
    if text.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// An industry name as configured: 1 to 64 bytes, no control characters, no
/// surrounding spaces.
pub fn check_industry_name(text: &str) -> Result<(), String> {
    if text.is_empty() || text.len() > MAX_TERM_BYTES || text.trim() != text {
        return Err(format!(
            "must be 1 to {MAX_TERM_BYTES} bytes without surrounding spaces"
        ));
    }
    if text.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// A platform name as configured: an ID such as `alipay`.
pub fn check_platform_name(text: &str) -> Result<(), String> {
    super::catalog::check_object_id(text)
}

/// What an import may contain: the configured counties, industries and
/// platforms. Only decisions consult it; replay applies recorded merchants
/// even if the configuration has since changed.
#[derive(Clone, Debug, Default)]
pub struct MerchantRules {
    counties: Vec<CountyCode>,
    industries: Vec<String>,
    platforms: Vec<String>,
}

impl MerchantRules {
    /// The lists are validated by the configuration; order is kept for display.
    pub fn new(
        mut counties: Vec<CountyCode>,
        industries: Vec<String>,
        platforms: Vec<String>,
    ) -> MerchantRules {
        counties.sort_unstable();
        counties.dedup();
        MerchantRules {
            counties,
            industries,
            platforms,
        }
    }

    pub fn industries(&self) -> &[String] {
        &self.industries
    }

    pub fn platforms(&self) -> &[String] {
        &self.platforms
    }

    pub fn has_county(&self, county: CountyCode) -> bool {
        self.counties.binary_search(&county).is_ok()
    }

    fn check_county(&self, text: &str) -> Result<CountyCode, String> {
        let code = parse_county_code(text)
            .ok_or_else(|| format!("{text:?} is not a 6-digit county code"))?;
        if self.has_county(code) {
            Ok(code)
        } else {
            Err(format!("{text} is not a configured county"))
        }
    }

    fn check_term(text: &str, allowed: &[String], what: &str) -> Result<(), String> {
        if allowed.iter().any(|a| a == text) {
            Ok(())
        } else {
            Err(format!(
                "{text:?} is not a configured {what}; one of: {}",
                allowed.join(", ")
            ))
        }
    }
}

/// A county code written as 6 ASCII digits.
pub fn parse_county_code(text: &str) -> Option<CountyCode> {
    if text.len() != 6 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().map(CountyCode)
}

/// One data row of an import, as text, with its line in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportRow {
    pub line: u64,
    pub merchant_id: String,
    pub name: String,
    pub county: String,
    pub industry: String,
    pub platform: String,
    /// `None` when the file has no `status` column or the cell is empty: a new
    /// merchant is then active, and an existing one is compared without it.
    pub status: Option<String>,
}

/// One problem with one row (line 1 is the header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowError {
    pub line: u64,
    pub field: String,
    pub reason: String,
}

/// Row errors in line order: the first [`MAX_ROW_ERRORS_LISTED`], and how many in all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RowErrors {
    listed: Vec<RowError>,
    total: usize,
}

impl RowErrors {
    /// Records an error; callers push in non-decreasing line order.
    pub fn push(&mut self, line: u64, field: impl Into<String>, reason: impl Into<String>) {
        self.total += 1;
        if self.listed.len() < MAX_ROW_ERRORS_LISTED {
            self.listed.push(RowError {
                line,
                field: field.into(),
                reason: reason.into(),
            });
        }
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn listed(&self) -> &[RowError] {
        &self.listed
    }

    /// Both sets together, still the first errors by line. Each side holds
    /// its own first errors, so together they hold the first of the union.
    pub fn merge(mut self, other: RowErrors) -> RowErrors {
        self.total += other.total;
        self.listed.extend(other.listed);
        self.listed.sort_by_key(|e| e.line);
        self.listed.truncate(MAX_ROW_ERRORS_LISTED);
        self
    }
}

/// An import that passed every check: the merchants it creates, and how many
/// rows matched merchants already recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MerchantImport {
    pub created: Vec<Merchant>,
    pub unchanged: usize,
    pub rows: usize,
}

/// Merchants counted by status.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusCounts {
    pub active: u64,
    pub suspended: u64,
}

impl StatusCounts {
    pub fn total(&self) -> u64 {
        self.active + self.suspended
    }

    fn slot(&mut self, status: MerchantStatus) -> &mut u64 {
        match status {
            MerchantStatus::Active => &mut self.active,
            MerchantStatus::Suspended => &mut self.suspended,
        }
    }
}

/// No merchant has that ID.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct UnknownMerchant;

/// Which merchants a listing shows; `None` matches anything.
#[derive(Clone, Copy, Debug, Default)]
pub struct MerchantFilter<'a> {
    pub county: Option<CountyCode>,
    pub industry: Option<&'a str>,
    pub platform: Option<&'a str>,
    pub status: Option<MerchantStatus>,
}

impl MerchantFilter<'_> {
    pub fn matches(&self, m: &Merchant) -> bool {
        self.county.is_none_or(|c| c == m.county)
            && self.industry.is_none_or(|i| i == m.industry)
            && self.platform.is_none_or(|p| p == m.platform)
            && self.status.is_none_or(|s| s == m.status)
    }
}

/// One page of a listing, in `merchant_id` order. `next_page_token` (the last
/// ID looked at) is set while merchants remain after it.
#[derive(Debug)]
pub struct MerchantPage<'a> {
    pub merchants: Vec<&'a Merchant>,
    pub next_page_token: Option<String>,
}

type Chunk = Arc<Vec<Merchant>>;

#[derive(Clone, Debug, Default)]
pub struct MerchantRegistry {
    chunks: Vec<Chunk>,
    len: usize,
    /// Ordinals hashed by their merchant's ID: the lookup index. The hash is
    /// unkeyed; only authenticated operators choose the IDs it holds.
    ordinal_by_hash: HashTable<u32>,
    /// The same ordinals in ID order: the listing index.
    ordinal_by_id: BTreeMap<String, u32>,
    cells: BTreeMap<CountyCode, BTreeMap<String, StatusCounts>>,
    totals: StatusCounts,
}

/// How a valid row relates to the registry.
enum RowFate {
    Create,
    Unchanged,
    Invalid,
}

impl MerchantRegistry {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The merchant with this ID: the lookup redemption uses.
    pub fn get(&self, merchant_id: &str) -> Option<&Merchant> {
        let ordinal = self.ordinal(merchant_id)?;
        Some(self.at(ordinal))
    }

    fn ordinal(&self, merchant_id: &str) -> Option<u32> {
        self.ordinal_by_hash
            .find(xxh3_64(merchant_id.as_bytes()), |o| {
                self.at(*o).merchant_id == merchant_id
            })
            .copied()
    }

    fn at(&self, ordinal: u32) -> &Merchant {
        merchant_at(&self.chunks, ordinal)
    }

    /// Merchants by status, over the whole registry.
    pub fn totals(&self) -> StatusCounts {
        self.totals
    }

    /// Counts per (county, industry) cell that has merchants, by county then industry.
    pub fn counts(&self) -> impl Iterator<Item = (CountyCode, &str, StatusCounts)> {
        self.cells.iter().flat_map(|(county, by_industry)| {
            by_industry
                .iter()
                .map(move |(industry, counts)| (*county, industry.as_str(), *counts))
        })
    }

    /// Checks every row; on success the merchants to create. Rows must be in
    /// line order. Every problem is reported, not only the first.
    pub fn decide_import(
        &self,
        rows: Vec<ImportRow>,
        rules: &MerchantRules,
    ) -> Result<MerchantImport, RowErrors> {
        let mut errors = RowErrors::default();
        let fates = self.classify(&rows, rules, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let row_count = rows.len();
        let mut created = Vec::with_capacity(row_count);
        let mut unchanged = 0;
        for (row, fate) in rows.into_iter().zip(fates) {
            match fate {
                RowFate::Create => {
                    let county = parse_county_code(&row.county).expect("checked in classify");
                    let status = row
                        .status
                        .as_deref()
                        .map_or(Some(MerchantStatus::Active), MerchantStatus::parse)
                        .expect("checked in classify");
                    created.push(Merchant {
                        merchant_id: row.merchant_id,
                        name: row.name,
                        county,
                        industry: row.industry,
                        platform: row.platform,
                        status,
                    });
                }
                RowFate::Unchanged => unchanged += 1,
                RowFate::Invalid => unreachable!("no errors were recorded"),
            }
        }
        Ok(MerchantImport {
            created,
            unchanged,
            rows: row_count,
        })
    }

    fn classify(
        &self,
        rows: &[ImportRow],
        rules: &MerchantRules,
        errors: &mut RowErrors,
    ) -> Vec<RowFate> {
        // Row indexes by merchant_id hash: the first row with each ID.
        let mut first_row: HashTable<usize> = HashTable::with_capacity(rows.len());
        let mut new_count = 0usize;
        let mut fates = Vec::with_capacity(rows.len());
        for (index, row) in rows.iter().enumerate() {
            let line = row.line;
            if index == MAX_IMPORT_ROWS {
                errors.push(
                    line,
                    "row",
                    format!("an import holds at most {MAX_IMPORT_ROWS} rows; split the file"),
                );
                fates.push(RowFate::Invalid);
                break;
            }
            let before = errors.total();
            let mut check = |field: &str, result: Result<(), String>| {
                if let Err(reason) = result {
                    errors.push(line, field, reason);
                }
            };
            check("merchant_id", check_merchant_id(&row.merchant_id));
            match first_row.entry(
                xxh3_64(row.merchant_id.as_bytes()),
                |i| rows[*i].merchant_id == row.merchant_id,
                |i| xxh3_64(rows[*i].merchant_id.as_bytes()),
            ) {
                hashbrown::hash_table::Entry::Occupied(first) => check(
                    "merchant_id",
                    Err(format!(
                        "{} appears more than once in the file; first on line {}",
                        row.merchant_id,
                        rows[*first.get()].line
                    )),
                ),
                hashbrown::hash_table::Entry::Vacant(slot) => {
                    slot.insert(index);
                }
            }
            check("name", check_merchant_name(&row.name));
            let county = rules.check_county(&row.county);
            check("county", county.as_ref().map(|_| ()).map_err(Clone::clone));
            check(
                "industry",
                MerchantRules::check_term(&row.industry, &rules.industries, "industry"),
            );
            check(
                "platform",
                MerchantRules::check_term(&row.platform, &rules.platforms, "platform"),
            );
            let status = match row.status.as_deref() {
                None => None,
                Some(text) => match MerchantStatus::parse(text) {
                    Some(s) => Some(s),
                    None => {
                        check(
                            "status",
                            Err(format!("{text:?} is not \"active\" or \"suspended\"")),
                        );
                        None
                    }
                },
            };
            if errors.total() != before {
                fates.push(RowFate::Invalid);
                continue;
            }
            let county = county.expect("no county error was recorded");
            match self.get(&row.merchant_id) {
                Some(existing) => {
                    let differing = differing_fields(existing, row, county, status);
                    if differing.is_empty() {
                        fates.push(RowFate::Unchanged);
                    } else {
                        errors.push(
                            line,
                            "merchant_id",
                            format!(
                                "exists with different fields ({}); an import never changes a merchant (use suspend or resume for the status)",
                                differing.join(", ")
                            ),
                        );
                        fates.push(RowFate::Invalid);
                    }
                }
                None if self.len + new_count >= MAX_MERCHANTS => {
                    errors.push(
                        line,
                        "merchant_id",
                        format!("the registry is full ({MAX_MERCHANTS} merchants)"),
                    );
                    fates.push(RowFate::Invalid);
                }
                None => {
                    new_count += 1;
                    fates.push(RowFate::Create);
                }
            }
        }
        fates
    }

    /// Why `merchants` cannot be applied (replay checks records before applying them).
    pub fn check_import(&self, merchants: &[Merchant]) -> Result<(), String> {
        if self.len + merchants.len() > MAX_MERCHANTS {
            return Err(format!("more than {MAX_MERCHANTS} merchants"));
        }
        let mut seen = HashMap::with_capacity(merchants.len());
        for m in merchants {
            if self.ordinal(&m.merchant_id).is_some()
                || seen.insert(m.merchant_id.as_str(), ()).is_some()
            {
                return Err(format!("merchant {} recorded twice", m.merchant_id));
            }
        }
        Ok(())
    }

    /// Adds new merchants. They must be what `decide_import` created (or a
    /// replayed record that passed `check_import`): new IDs, within the limit.
    pub fn apply_import(&mut self, merchants: Vec<Merchant>) {
        assert!(
            self.len + merchants.len() <= MAX_MERCHANTS,
            "merchant limit exceeded by an applied import"
        );
        let chunks = &self.chunks;
        self.ordinal_by_hash.reserve(merchants.len(), |o| {
            xxh3_64(merchant_at(chunks, *o).merchant_id.as_bytes())
        });
        for merchant in merchants {
            let ordinal = u32::try_from(self.len).expect("MAX_MERCHANTS fits u32");
            let hash = xxh3_64(merchant.merchant_id.as_bytes());
            let chunks = &self.chunks;
            match self.ordinal_by_hash.entry(
                hash,
                |o| merchant_at(chunks, *o).merchant_id == merchant.merchant_id,
                |o| xxh3_64(merchant_at(chunks, *o).merchant_id.as_bytes()),
            ) {
                hashbrown::hash_table::Entry::Occupied(_) => {
                    panic!("merchant {} imported twice", merchant.merchant_id)
                }
                hashbrown::hash_table::Entry::Vacant(slot) => {
                    slot.insert(ordinal);
                }
            }
            self.ordinal_by_id
                .insert(merchant.merchant_id.clone(), ordinal);
            *self
                .cell(merchant.county, &merchant.industry)
                .slot(merchant.status) += 1;
            *self.totals.slot(merchant.status) += 1;
            if self.len.is_multiple_of(CHUNK_MERCHANTS) {
                self.chunks
                    .push(Arc::new(Vec::with_capacity(CHUNK_MERCHANTS)));
            }
            let tail = self.chunks.last_mut().expect("a chunk was just ensured");
            Arc::make_mut(tail).push(merchant);
            self.len += 1;
        }
    }

    fn cell(&mut self, county: CountyCode, industry: &str) -> &mut StatusCounts {
        let by_industry = self.cells.entry(county).or_default();
        if !by_industry.contains_key(industry) {
            by_industry.insert(industry.to_owned(), StatusCounts::default());
        }
        by_industry.get_mut(industry).expect("just inserted")
    }

    /// The change that moves a merchant to `status`; `None` if it already has it.
    pub fn decide_status(
        &self,
        merchant_id: &str,
        status: MerchantStatus,
        now: UnixMillis,
    ) -> Result<Option<MerchantStatusChanged>, UnknownMerchant> {
        let merchant = self.get(merchant_id).ok_or(UnknownMerchant)?;
        if merchant.status == status {
            return Ok(None);
        }
        Ok(Some(MerchantStatusChanged {
            merchant_id: merchant_id.to_owned(),
            status,
            at: now,
        }))
    }

    pub fn apply_status(&mut self, change: &MerchantStatusChanged) {
        let ordinal = self
            .ordinal(&change.merchant_id)
            .unwrap_or_else(|| panic!("status change for unknown merchant {}", change.merchant_id));
        let i = ordinal as usize;
        let chunk = Arc::make_mut(&mut self.chunks[i / CHUNK_MERCHANTS]);
        let merchant = &mut chunk[i % CHUNK_MERCHANTS];
        let old = std::mem::replace(&mut merchant.status, change.status);
        if old == change.status {
            return;
        }
        let (county, industry) = (merchant.county, merchant.industry.clone());
        let cell = self.cell(county, &industry);
        *cell.slot(old) -= 1;
        *cell.slot(change.status) += 1;
        *self.totals.slot(old) -= 1;
        *self.totals.slot(change.status) += 1;
    }

    /// A page of merchants matching `filter`, after `page_token` (an ID) in ID
    /// order. `page_size` is clamped to `1..=MAX_PAGE_SIZE`.
    pub fn list(
        &self,
        filter: &MerchantFilter<'_>,
        page_token: Option<&str>,
        page_size: usize,
    ) -> MerchantPage<'_> {
        let page_size = page_size.clamp(1, MAX_PAGE_SIZE);
        let start = page_token.map_or(Bound::Unbounded, Bound::Excluded);
        let mut merchants = Vec::new();
        let mut last_seen: Option<&str> = None;
        for (scanned, (id, ordinal)) in self
            .ordinal_by_id
            .range::<str, _>((start, Bound::Unbounded))
            .enumerate()
        {
            if scanned == MAX_LIST_SCAN_MERCHANTS || merchants.len() == page_size {
                break;
            }
            last_seen = Some(id);
            let merchant = self.at(*ordinal);
            if filter.matches(merchant) {
                merchants.push(merchant);
            }
        }
        let more = last_seen.is_some_and(|last| {
            self.ordinal_by_id
                .range::<str, _>((Bound::Excluded(last), Bound::Unbounded))
                .next()
                .is_some()
        });
        MerchantPage {
            merchants,
            next_page_token: if more {
                last_seen.map(str::to_owned)
            } else {
                None
            },
        }
    }

    /// A frozen copy of every merchant for a checkpoint: shares the chunks.
    pub fn share(&self) -> MerchantShare {
        MerchantShare {
            chunks: self.chunks.clone(),
        }
    }

    /// Recounts everything from the merchants themselves (after replay, in tests).
    pub fn check_invariants(&self) {
        let stored: usize = self.chunks.iter().map(|c| c.len()).sum();
        assert_eq!(stored, self.len, "chunk lengths add up to len");
        assert_eq!(
            self.ordinal_by_id.len(),
            self.len,
            "one ID index entry each"
        );
        assert_eq!(self.ordinal_by_hash.len(), self.len, "one hash entry each");
        let mut totals = StatusCounts::default();
        let mut cells: BTreeMap<(CountyCode, &str), StatusCounts> = BTreeMap::new();
        for (ordinal, merchant) in self.chunks.iter().flat_map(|c| c.iter()).enumerate() {
            assert_eq!(
                self.ordinal_by_id.get(&merchant.merchant_id),
                Some(&(ordinal as u32)),
                "ID index points at {}",
                merchant.merchant_id
            );
            assert_eq!(
                self.ordinal(&merchant.merchant_id),
                Some(ordinal as u32),
                "hash index points at {}",
                merchant.merchant_id
            );
            *totals.slot(merchant.status) += 1;
            *cells
                .entry((merchant.county, merchant.industry.as_str()))
                .or_default()
                .slot(merchant.status) += 1;
        }
        assert_eq!(totals, self.totals, "status totals");
        let kept: BTreeMap<(CountyCode, &str), StatusCounts> = self
            .counts()
            .map(|(county, industry, counts)| ((county, industry), counts))
            .collect();
        assert_eq!(cells, kept, "county × industry counts");
    }
}

fn merchant_at(chunks: &[Chunk], ordinal: u32) -> &Merchant {
    let i = ordinal as usize;
    &chunks[i / CHUNK_MERCHANTS][i % CHUNK_MERCHANTS]
}

fn differing_fields(
    existing: &Merchant,
    row: &ImportRow,
    county: CountyCode,
    status: Option<MerchantStatus>,
) -> Vec<&'static str> {
    let mut out = Vec::new();
    if existing.name != row.name {
        out.push("name");
    }
    if existing.county != county {
        out.push("county");
    }
    if existing.industry != row.industry {
        out.push("industry");
    }
    if existing.platform != row.platform {
        out.push("platform");
    }
    if status.is_some_and(|s| s != existing.status) {
        out.push("status");
    }
    out
}

/// An immutable copy of every merchant at one moment, in import order.
#[derive(Clone, Debug)]
pub struct MerchantShare {
    chunks: Vec<Chunk>,
}

impl MerchantShare {
    pub fn len(&self) -> usize {
        self.chunks.iter().map(|c| c.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The merchants, chunk by chunk.
    pub fn chunks(&self) -> impl Iterator<Item = &[Merchant]> {
        self.chunks.iter().map(|c| c.as_slice())
    }
}

/// Reassembles the records of one import during replay.
///
/// An import of many merchants is written as `parts` records, all queued
/// under the registry's write lock, so no other merchant record comes between
/// them. It is applied only once its last part is read: an import whose
/// tail never reached the disk (a crash, or a refused append, before its
/// answer) is dropped whole, exactly as the live registry never applied it.
#[derive(Debug, Default)]
pub struct ImportAssembler {
    parts: u32,
    next_part: u32,
    merchants: Vec<Merchant>,
}

/// What one part record amounts to.
#[derive(Debug, PartialEq, Eq)]
pub enum Assembled {
    /// More parts are due.
    Pending,
    /// The import is complete: apply these merchants.
    Complete(Vec<Merchant>),
}

impl ImportAssembler {
    /// Takes the next part. A part 0 drops any unfinished import first.
    pub fn push(&mut self, part: MerchantsImported) -> Result<Assembled, String> {
        if part.parts == 0 || part.part >= part.parts {
            return Err(format!(
                "part {} of {} is impossible",
                part.part, part.parts
            ));
        }
        if part.part == 0 {
            self.abandon();
            self.parts = part.parts;
        } else if self.next_part != part.part || self.parts != part.parts {
            return Err(format!(
                "part {} of {} does not follow part {} of {}",
                part.part,
                part.parts,
                self.next_part.wrapping_sub(1),
                self.parts
            ));
        }
        if self.merchants.len() + part.merchants.len() > MAX_IMPORT_ROWS {
            return Err(format!(
                "an import of more than {MAX_IMPORT_ROWS} merchants"
            ));
        }
        self.merchants.extend(part.merchants);
        self.next_part = part.part + 1;
        if self.next_part < self.parts {
            return Ok(Assembled::Pending);
        }
        self.parts = 0;
        self.next_part = 0;
        Ok(Assembled::Complete(std::mem::take(&mut self.merchants)))
    }

    /// Drops an unfinished import; returns how many of its parts were read.
    pub fn abandon(&mut self) -> u32 {
        let read = self.next_part;
        self.parts = 0;
        self.next_part = 0;
        self.merchants.clear();
        read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> MerchantRules {
        MerchantRules::new(
            vec![CountyCode(420502), CountyCode(420503)],
            vec!["餐饮".into(), "零售".into()],
            vec!["alipay".into(), "wechat".into()],
        )
    }

    fn row(line: u64, id: &str) -> ImportRow {
        ImportRow {
            line,
            merchant_id: id.into(),
            name: format!("店 {id}"),
            county: "420502".into(),
            industry: "餐饮".into(),
            platform: "alipay".into(),
            status: None,
        }
    }

    fn imported(registry: &mut MerchantRegistry, rows: Vec<ImportRow>) -> MerchantImport {
        let import = registry.decide_import(rows, &rules()).expect("valid rows");
        registry.apply_import(import.created.clone());
        registry.check_invariants();
        import
    }

    /// (line, field) of each listed error.
    fn where_(errors: &RowErrors) -> Vec<(u64, &str)> {
        errors
            .listed()
            .iter()
            .map(|e| (e.line, e.field.as_str()))
            .collect()
    }

    #[test]
    fn import_creates_then_retry_is_unchanged() {
        let mut registry = MerchantRegistry::default();
        let rows = vec![row(2, "m1"), row(3, "m2")];
        let first = imported(&mut registry, rows.clone());
        assert_eq!(
            (first.created.len(), first.unchanged, first.rows),
            (2, 0, 2)
        );
        let again = imported(&mut registry, rows);
        assert_eq!((again.created.len(), again.unchanged), (0, 2));
        assert_eq!(registry.len(), 2);
        let m1 = registry.get("m1").expect("m1");
        assert_eq!(m1.county, CountyCode(420502));
        assert!(m1.is_active());
        assert_eq!(registry.get("nope"), None);
    }

    #[test]
    fn every_row_error_is_reported_with_its_line_and_field() {
        let registry = MerchantRegistry::default();
        let mut rows = vec![row(2, "ok-1")];
        let mut bad = |line, f: fn(&mut ImportRow)| {
            let mut r = row(line, &format!("m{line}"));
            f(&mut r);
            rows.push(r);
        };
        bad(3, |r| r.merchant_id = "has space".into());
        bad(4, |r| r.name = "   ".into());
        bad(5, |r| r.county = "420599".into());
        bad(6, |r| r.county = "4205".into());
        bad(7, |r| r.industry = "饮食".into());
        bad(8, |r| r.platform = "paypal".into());
        bad(9, |r| r.status = Some("closed".into()));
        bad(10, |r| r.merchant_id = "ok-1".into());
        bad(11, |r| {
            r.county = "x".into();
            r.industry = "y".into();
        });
        let errors = registry
            .decide_import(rows, &rules())
            .expect_err("bad rows");
        assert_eq!(
            where_(&errors),
            vec![
                (3, "merchant_id"),
                (4, "name"),
                (5, "county"),
                (6, "county"),
                (7, "industry"),
                (8, "platform"),
                (9, "status"),
                (10, "merchant_id"),
                (11, "county"),
                (11, "industry"),
            ]
        );
        assert_eq!(errors.total(), 10);
        assert!(errors.listed()[7].reason.contains("first on line 2"));
        assert!(errors.listed()[4].reason.contains("餐饮, 零售"));
    }

    #[test]
    fn an_existing_merchant_with_other_fields_is_an_error_and_nothing_is_created() {
        let mut registry = MerchantRegistry::default();
        imported(&mut registry, vec![row(2, "m1")]);
        let mut changed = row(3, "m1");
        changed.name = "renamed".into();
        changed.platform = "wechat".into();
        let errors = registry
            .decide_import(vec![row(2, "m2"), changed], &rules())
            .expect_err("conflict");
        assert_eq!(where_(&errors), vec![(3, "merchant_id")]);
        assert!(
            errors.listed()[0]
                .reason
                .starts_with("exists with different fields (name, platform)")
        );
        assert_eq!(registry.len(), 1);
    }

    #[test]
    fn status_is_compared_only_when_the_file_gives_it() {
        let mut registry = MerchantRegistry::default();
        imported(&mut registry, vec![row(2, "m1")]);
        let change = registry
            .decide_status("m1", MerchantStatus::Suspended, UnixMillis(5))
            .expect("known")
            .expect("a change");
        registry.apply_status(&change);
        // Without a status column the row matches the suspended merchant.
        assert_eq!(imported(&mut registry, vec![row(2, "m1")]).unchanged, 1);
        let mut active = row(2, "m1");
        active.status = Some("active".into());
        let errors = registry
            .decide_import(vec![active], &rules())
            .expect_err("status differs");
        assert!(errors.listed()[0].reason.contains("(status)"));
        let mut suspended = row(2, "m1");
        suspended.status = Some("suspended".into());
        assert_eq!(imported(&mut registry, vec![suspended]).unchanged, 1);
    }

    #[test]
    fn status_changes_move_counts_and_repeat_as_no_ops() {
        let mut registry = MerchantRegistry::default();
        let mut retail = row(3, "m2");
        retail.industry = "零售".into();
        retail.status = Some("suspended".into());
        imported(&mut registry, vec![row(2, "m1"), retail]);
        assert_eq!(
            registry.totals(),
            StatusCounts {
                active: 1,
                suspended: 1
            }
        );
        assert_eq!(
            registry.decide_status("ghost", MerchantStatus::Active, UnixMillis(0)),
            Err(UnknownMerchant)
        );
        assert_eq!(
            registry.decide_status("m1", MerchantStatus::Active, UnixMillis(0)),
            Ok(None)
        );
        let change = registry
            .decide_status("m1", MerchantStatus::Suspended, UnixMillis(7))
            .expect("known")
            .expect("change");
        assert_eq!(change.at, UnixMillis(7));
        registry.apply_status(&change);
        registry.check_invariants();
        let cells: Vec<_> = registry.counts().collect();
        assert_eq!(
            cells,
            vec![
                (
                    CountyCode(420502),
                    "零售",
                    StatusCounts {
                        active: 0,
                        suspended: 1
                    }
                ),
                (
                    CountyCode(420502),
                    "餐饮",
                    StatusCounts {
                        active: 0,
                        suspended: 1
                    }
                ),
            ]
        );
    }

    #[test]
    fn a_share_is_unaffected_by_later_changes() {
        let mut registry = MerchantRegistry::default();
        let rows: Vec<_> = (0..CHUNK_MERCHANTS + 10)
            .map(|i| row(i as u64 + 2, &format!("m{i:05}")))
            .collect();
        imported(&mut registry, rows);
        let share = registry.share();
        let change = registry
            .decide_status("m00003", MerchantStatus::Suspended, UnixMillis(1))
            .expect("known")
            .expect("change");
        registry.apply_status(&change);
        imported(&mut registry, vec![row(2, "z-late")]);
        assert_eq!(share.len(), CHUNK_MERCHANTS + 10);
        let shared: Vec<&Merchant> = share.chunks().flatten().collect();
        assert!(shared.iter().all(|m| m.is_active()));
        assert!(!registry.get("m00003").expect("m3").is_active());
        assert_eq!(registry.len(), CHUNK_MERCHANTS + 11);
    }

    #[test]
    fn too_many_rows_is_an_error() {
        let registry = MerchantRegistry::default();
        let rows: Vec<_> = (0..=MAX_IMPORT_ROWS)
            .map(|i| row(i as u64 + 2, &format!("m{i}")))
            .collect();
        let errors = registry
            .decide_import(rows, &rules())
            .expect_err("too many");
        assert_eq!(where_(&errors), vec![(MAX_IMPORT_ROWS as u64 + 2, "row")]);
    }

    #[test]
    fn row_errors_are_bounded_and_merge_in_line_order() {
        let mut a = RowErrors::default();
        let mut b = RowErrors::default();
        for line in 0..(MAX_ROW_ERRORS_LISTED as u64 + 50) {
            if line % 2 == 0 {
                a.push(line, "x", "even");
            } else {
                b.push(line, "y", "odd");
            }
        }
        let merged = a.merge(b);
        assert_eq!(merged.total(), MAX_ROW_ERRORS_LISTED + 50);
        assert_eq!(merged.listed().len(), MAX_ROW_ERRORS_LISTED);
        assert!(
            merged
                .listed()
                .iter()
                .enumerate()
                .all(|(i, e)| e.line == i as u64)
        );
    }

    #[test]
    fn listing_pages_through_everything_in_id_order() {
        let mut registry = MerchantRegistry::default();
        let rows: Vec<_> = (0..250)
            .map(|i| {
                let mut r = row(i + 2, &format!("m{:03}", 249 - i));
                if i % 5 == 0 {
                    r.county = "420503".into();
                }
                r
            })
            .collect();
        imported(&mut registry, rows);
        let filter = MerchantFilter {
            county: Some(CountyCode(420503)),
            ..MerchantFilter::default()
        };
        let mut token: Option<String> = None;
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let page = registry.list(&filter, token.as_deref(), 7);
            pages += 1;
            seen.extend(page.merchants.iter().map(|m| m.merchant_id.clone()));
            match page.next_page_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        assert_eq!(seen.len(), 50);
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "stable ID order");
        assert_eq!(pages, 8, "50 merchants in pages of 7");
        let all = registry.list(&MerchantFilter::default(), None, 10_000);
        assert_eq!(all.merchants.len(), MAX_PAGE_SIZE.min(250));
        assert_eq!(all.next_page_token, None);
    }

    #[test]
    fn assembler_applies_whole_imports_only() {
        let m = |id: &str| Merchant {
            merchant_id: id.into(),
            name: "n".into(),
            county: CountyCode(420502),
            industry: "餐饮".into(),
            platform: "alipay".into(),
            status: MerchantStatus::Active,
        };
        let part = |part, parts, ids: &[&str]| MerchantsImported {
            part,
            parts,
            merchants: ids.iter().map(|id| m(id)).collect(),
        };
        let mut a = ImportAssembler::default();
        assert_eq!(
            a.push(part(0, 1, &["a"])),
            Ok(Assembled::Complete(vec![m("a")]))
        );
        assert_eq!(a.push(part(0, 3, &["b"])), Ok(Assembled::Pending));
        assert_eq!(a.push(part(1, 3, &["c"])), Ok(Assembled::Pending));
        // A new import begins: the unfinished one is dropped whole.
        assert_eq!(a.push(part(0, 2, &["d"])), Ok(Assembled::Pending));
        assert!(a.push(part(0, 2, &["x"])).is_ok());
        assert!(a.push(part(0, 0, &[])).is_err());
        assert!(a.push(part(2, 2, &[])).is_err());
        assert_eq!(
            a.push(part(1, 2, &["e"])),
            Ok(Assembled::Complete(vec![m("x"), m("e")]))
        );
        assert!(a.push(part(1, 2, &["f"])).is_err(), "no part 0 before it");
        assert_eq!(a.push(part(0, 2, &["g"])), Ok(Assembled::Pending));
        assert_eq!(a.abandon(), 1);
    }
}
