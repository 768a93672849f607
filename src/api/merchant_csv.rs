//! Merchant import files: UTF-8 CSV with a header row, read into rows for the
//! core to check.
//!
//! This layer checks only the file's shape: the header, the number of fields
//! on each line, and UTF-8. What the values mean (IDs, counties, industries,
//! duplicates, existing merchants) is the core's to decide. Every problem is
//! reported with its line number (line 1 is the header; a quoted field that
//! spans lines is reported at the line where its record starts).

use crate::core::merchant::MAX_IMPORT_ROWS;
use crate::core::{ImportRow, RowErrors};

/// Columns every file must have, in any order.
pub const REQUIRED_COLUMNS: [&str; 5] = ["merchant_id", "name", "county", "industry", "platform"];
/// A column a file may add: `active` (the default) or `suspended`.
pub const STATUS_COLUMN: &str = "status";

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// A file read into rows. `rows` holds the lines whose shape is right, even
/// when other lines had errors, so the core can report their errors too.
#[derive(Debug, Default)]
pub struct ParsedCsv {
    pub rows: Vec<ImportRow>,
    pub errors: RowErrors,
    /// Whether the header was usable; if not, no line was read.
    pub header_ok: bool,
    /// Data lines read, good or bad.
    pub data_rows: usize,
}

/// Where each column is in the file.
struct Columns {
    index: [usize; 5],
    status: Option<usize>,
    width: usize,
}

pub fn parse_merchant_csv(bytes: &[u8]) -> ParsedCsv {
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let mut parsed = ParsedCsv::default();
    let mut record = csv::ByteRecord::new();
    let columns = match reader.read_byte_record(&mut record) {
        Ok(true) => header(&record, &mut parsed.errors),
        Ok(false) => {
            parsed.errors.push(
                1,
                "header",
                format!(
                    "the file is empty; its first line must be the header {}",
                    REQUIRED_COLUMNS.join(",")
                ),
            );
            None
        }
        Err(e) => {
            parsed.errors.push(1, "header", e.to_string());
            None
        }
    };
    let Some(columns) = columns else {
        return parsed;
    };
    parsed.header_ok = true;
    // One row a line at most: sized once instead of grown (and copied) repeatedly.
    let line_count = bytes.iter().filter(|&&b| b == b'\n').count();
    parsed.rows = Vec::with_capacity(line_count.min(MAX_IMPORT_ROWS));
    let mut lines = LineCounter::default();
    loop {
        let at = reader.position().byte();
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                parsed
                    .errors
                    .push(lines.line_at(bytes, at), "row", e.to_string());
                break;
            }
        }
        let start = record.position().map_or(at, |p| p.byte());
        let line = lines.line_at(bytes, start);
        if parsed.data_rows == MAX_IMPORT_ROWS {
            parsed.errors.push(
                line,
                "row",
                format!("an import holds at most {MAX_IMPORT_ROWS} rows; split the file"),
            );
            break;
        }
        parsed.data_rows += 1;
        if let Some(row) = data_row(line, &record, &columns, &mut parsed.errors) {
            parsed.rows.push(row);
        }
    }
    parsed
}

/// Line numbers from byte offsets. After a CRLF line ending (what Excel
/// writes) the csv crate reports a record as starting at the LF, and its own
/// line count lags by one, so lines are counted here: one plus the newlines
/// before the record's first byte that is not a line ending.
#[derive(Default)]
struct LineCounter {
    counted_to: usize,
    newlines: u64,
}

impl LineCounter {
    /// The line of byte `offset`; offsets must not decrease between calls.
    fn line_at(&mut self, bytes: &[u8], offset: u64) -> u64 {
        let mut offset = (offset as usize).clamp(self.counted_to, bytes.len());
        while offset < bytes.len() && matches!(bytes[offset], b'\r' | b'\n') {
            offset += 1;
        }
        self.newlines += bytes[self.counted_to..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
        self.counted_to = offset;
        self.newlines + 1
    }
}

fn header(record: &csv::ByteRecord, errors: &mut RowErrors) -> Option<Columns> {
    let before = errors.total();
    let mut index = [usize::MAX; 5];
    let mut status = None;
    for (i, raw) in record.iter().enumerate() {
        let Ok(name) = std::str::from_utf8(raw) else {
            errors.push(1, "header", format!("column {} is not valid UTF-8", i + 1));
            continue;
        };
        let slot = match REQUIRED_COLUMNS.iter().position(|c| *c == name) {
            Some(k) => &mut index[k],
            None if name == STATUS_COLUMN => status.get_or_insert(usize::MAX),
            None => {
                errors.push(
                    1,
                    "header",
                    format!(
                        "unknown column {name:?}; the columns are {},{STATUS_COLUMN} (status is optional)",
                        REQUIRED_COLUMNS.join(",")
                    ),
                );
                continue;
            }
        };
        if *slot != usize::MAX {
            errors.push(1, "header", format!("column {name:?} appears twice"));
        }
        *slot = i;
    }
    for (k, name) in REQUIRED_COLUMNS.iter().enumerate() {
        if index[k] == usize::MAX {
            errors.push(1, "header", format!("missing column {name:?}"));
        }
    }
    if errors.total() != before {
        return None;
    }
    Some(Columns {
        index,
        status,
        width: record.len(),
    })
}

fn data_row(
    line: u64,
    record: &csv::ByteRecord,
    columns: &Columns,
    errors: &mut RowErrors,
) -> Option<ImportRow> {
    if record.len() > columns.width {
        errors.push(
            line,
            "row",
            format!(
                "has {} fields, the header has {}",
                record.len(),
                columns.width
            ),
        );
        return None;
    }
    let before = errors.total();
    let mut text = |column: usize, name: &str| -> Option<String> {
        let Some(raw) = record.get(column) else {
            errors.push(
                line,
                name,
                format!(
                    "missing: the line has {} fields, the header has {}",
                    record.len(),
                    columns.width
                ),
            );
            return None;
        };
        match std::str::from_utf8(raw) {
            Ok(s) => Some(s.to_owned()),
            Err(_) => {
                errors.push(
                    line,
                    name,
                    "is not valid UTF-8 (save the file as UTF-8; GBK is not accepted)",
                );
                None
            }
        }
    };
    let [id, name, county, industry, platform] = columns.index;
    let merchant_id = text(id, "merchant_id");
    let name = text(name, "name");
    let county = text(county, "county");
    let industry = text(industry, "industry");
    let platform = text(platform, "platform");
    let status = columns.status.and_then(|s| text(s, STATUS_COLUMN));
    if errors.total() != before {
        return None;
    }
    Some(ImportRow {
        line,
        merchant_id: merchant_id?,
        name: name?,
        county: county?,
        industry: industry?,
        platform: platform?,
        status: status.filter(|s| !s.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (line, field) of each listed error.
    fn errors_of(text: &[u8]) -> Vec<(u64, String)> {
        parse_merchant_csv(text)
            .errors
            .listed()
            .iter()
            .map(|e| (e.line, e.field.clone()))
            .collect()
    }

    #[test]
    fn line_numbers_survive_crlf_and_multi_line_fields() {
        let text = b"merchant_id,name,county,industry,platform\r\n\
                     m1,a,1,x,y\r\n\
                     m2,\"b\r\nc\",1,x,y\r\n\
                     \r\n\
                     m3,d,1,x,y\r\n";
        let lines: Vec<u64> = parse_merchant_csv(text)
            .rows
            .iter()
            .map(|r| r.line)
            .collect();
        assert_eq!(lines, vec![2, 3, 6]);
    }

    #[test]
    fn reads_rows_with_quotes_bom_and_any_column_order() {
        let text = "\u{feff}county, merchant_id ,name,industry,platform,status\r\n\
                    420502,m1,\"张三, 小吃\",餐饮,alipay,\r\n\
                    \n\
                    420503,m2,\"多行\n名称\",零售,wechat,suspended\n";
        let parsed = parse_merchant_csv(text.as_bytes());
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert_eq!(parsed.data_rows, 2);
        let rows = parsed.rows;
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].line, 2);
        assert_eq!(rows[0].merchant_id, "m1");
        assert_eq!(rows[0].name, "张三, 小吃");
        assert_eq!(rows[0].status, None);
        assert_eq!(rows[1].line, 4);
        assert_eq!(rows[1].name, "多行\n名称");
        assert_eq!(rows[1].status.as_deref(), Some("suspended"));
    }

    #[test]
    fn header_problems_stop_the_file() {
        assert_eq!(errors_of(b""), vec![(1, "header".into())]);
        let bad = errors_of(b"merchant_id,name,county,industry,shop,name\nm1,a,420502,x,y,z\n");
        assert_eq!(
            bad,
            vec![
                (1, "header".into()),
                (1, "header".into()),
                (1, "header".into())
            ]
        );
        assert!(!parse_merchant_csv(b"id,name\n").header_ok);
    }

    #[test]
    fn shape_errors_name_the_line_and_field() {
        let mut text = b"merchant_id,name,county,industry,platform\n".to_vec();
        text.extend_from_slice(b"m1,ok,420502,x,y\n");
        text.extend_from_slice(b"m2,short,420502\n");
        text.extend_from_slice(b"m3,long,420502,x,y,z\n");
        text.extend_from_slice(b"m4,\xB2\xCD\xD2\xFB,420502,x,y\n");
        text.extend_from_slice(b"m5,ok,420502,x,y\n");
        let parsed = parse_merchant_csv(&text);
        assert_eq!(
            errors_of(&text),
            vec![
                (3, "industry".into()),
                (3, "platform".into()),
                (4, "row".into()),
                (5, "name".into())
            ]
        );
        assert_eq!(parsed.data_rows, 5);
        let lines: Vec<u64> = parsed.rows.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![2, 6]);
    }

    #[test]
    fn too_many_rows_is_one_error() {
        let mut text = String::from("merchant_id,name,county,industry,platform\n");
        for i in 0..=MAX_IMPORT_ROWS {
            text.push_str(&format!("m{i},n,420502,x,y\n"));
        }
        let parsed = parse_merchant_csv(text.as_bytes());
        assert_eq!(parsed.rows.len(), MAX_IMPORT_ROWS);
        assert_eq!(
            errors_of(text.as_bytes()),
            vec![(MAX_IMPORT_ROWS as u64 + 2, "row".into())]
        );
    }
}
