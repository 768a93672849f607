//! Model test of the merchant registry: random imports (new, identical,
//! conflicting and invalid rows, in-file duplicates, with and without a
//! status) and status changes run against a deliberately simple model (a
//! sorted map). Decisions must agree, counts and listings must match the
//! model, and replaying the journal records through `Recovered` must rebuild
//! the same registry.

use std::collections::BTreeMap;

use proptest::prelude::*;
use voucherd::core::merchant::ImportRow;
use voucherd::core::{
    CountyCode, DigestKey, Event, Merchant, MerchantFilter, MerchantRegistry, MerchantRules,
    MerchantStatus, UnixMillis,
};
use voucherd::dispenser::Recovered;
use voucherd::journal;

const COUNTIES: [u32; 3] = [420502, 420503, 420506];
const INDUSTRIES: [&str; 3] = ["餐饮", "零售", "文旅"];
const PLATFORMS: [&str; 2] = ["alipay", "wechat"];

#[derive(Clone, Debug)]
struct Row {
    id: u8,
    name: u8,
    /// 3 = a county not configured.
    county: u8,
    industry: u8,
    /// 0 none, 1 active, 2 suspended.
    status: u8,
}

#[derive(Clone, Debug)]
enum Op {
    Import(Vec<Row>),
    Status(u8, bool),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let row = (0u8..12, 0u8..2, 0u8..4, 0u8..3, 0u8..3).prop_map(
        |(id, name, county, industry, status)| Row {
            id,
            name,
            county,
            industry,
            status,
        },
    );
    prop_oneof![
        3 => prop::collection::vec(row, 0..6).prop_map(Op::Import),
        2 => (0u8..12, any::<bool>()).prop_map(|(id, suspend)| Op::Status(id, suspend)),
    ]
}

fn rules() -> MerchantRules {
    MerchantRules::new(
        COUNTIES.iter().map(|c| CountyCode(*c)).collect(),
        INDUSTRIES.map(String::from).to_vec(),
        PLATFORMS.map(String::from).to_vec(),
    )
}

fn import_row(line: u64, r: &Row) -> ImportRow {
    ImportRow {
        line,
        merchant_id: format!("m{:02}", r.id),
        name: format!("店{}", r.name),
        county: if r.county < 3 {
            COUNTIES[r.county as usize].to_string()
        } else {
            "420599".into()
        },
        industry: INDUSTRIES[r.industry as usize].into(),
        platform: PLATFORMS[r.id as usize % 2].into(),
        status: match r.status {
            0 => None,
            1 => Some("active".into()),
            _ => Some("suspended".into()),
        },
    }
}

/// What the model expects of an import: `Err(())` if any row is refused,
/// else the merchants it creates.
fn model_import(
    model: &BTreeMap<String, Merchant>,
    rows: &[ImportRow],
) -> Result<Vec<Merchant>, ()> {
    let mut created: Vec<Merchant> = Vec::new();
    let mut seen = Vec::new();
    for row in rows {
        if seen.contains(&row.merchant_id) || row.county == "420599" {
            return Err(());
        }
        seen.push(row.merchant_id.clone());
        let status = match row.status.as_deref() {
            Some("suspended") => Some(MerchantStatus::Suspended),
            Some(_) => Some(MerchantStatus::Active),
            None => None,
        };
        let county = CountyCode(row.county.parse().expect("digits"));
        match model.get(&row.merchant_id) {
            Some(m) => {
                let same = m.name == row.name
                    && m.county == county
                    && m.industry == row.industry
                    && m.platform == row.platform
                    && status.is_none_or(|s| s == m.status);
                if !same {
                    return Err(());
                }
            }
            None => created.push(Merchant {
                merchant_id: row.merchant_id.clone(),
                name: row.name.clone(),
                county,
                industry: row.industry.clone(),
                platform: row.platform.clone(),
                status: status.unwrap_or(MerchantStatus::Active),
            }),
        }
    }
    Ok(created)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn registry_matches_the_model_and_replays_to_the_same_state(
        ops in prop::collection::vec(op_strategy(), 1..40)
    ) {
        let rules = rules();
        let mut registry = MerchantRegistry::default();
        let mut model: BTreeMap<String, Merchant> = BTreeMap::new();
        let mut records: Vec<(u8, Vec<u8>)> = Vec::new();
        for (step, op) in ops.iter().enumerate() {
            match op {
                Op::Import(rows) => {
                    let rows: Vec<ImportRow> = rows
                        .iter()
                        .enumerate()
                        .map(|(i, r)| import_row(i as u64 + 2, r))
                        .collect();
                    let expected = model_import(&model, &rows);
                    match registry.decide_import(rows, &rules) {
                        Ok(import) => {
                            prop_assert_eq!(Ok(import.created.clone()), expected);
                            for payload in journal::encode_merchant_import(&import.created) {
                                records.push((journal::KIND_MERCHANTS_IMPORTED, payload));
                            }
                            for m in &import.created {
                                model.insert(m.merchant_id.clone(), m.clone());
                            }
                            registry.apply_import(import.created);
                        }
                        Err(errors) => {
                            prop_assert!(expected.is_err(), "refused: {:?}", errors);
                            prop_assert!(!errors.is_empty());
                        }
                    }
                }
                Op::Status(id, suspend) => {
                    let id = format!("m{id:02}");
                    let status = if *suspend { MerchantStatus::Suspended } else { MerchantStatus::Active };
                    match registry.decide_status(&id, status, UnixMillis(step as i64)) {
                        Err(_) => prop_assert!(!model.contains_key(&id)),
                        Ok(None) => prop_assert_eq!(model[&id].status, status),
                        Ok(Some(change)) => {
                            prop_assert_ne!(model[&id].status, status);
                            let event = Event::MerchantStatusChanged(change.clone());
                            records.push((journal::kind_of(&event), journal::encode(&event)));
                            registry.apply_status(&change);
                            model.get_mut(&id).expect("known").status = status;
                        }
                    }
                }
            }
            registry.check_invariants();
        }

        // Every merchant, in ID order, through pages of 2.
        let mut listed = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = registry.list(&MerchantFilter::default(), token.as_deref(), 2);
            listed.extend(page.merchants.into_iter().cloned());
            match page.next_page_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        let modelled: Vec<Merchant> = model.values().cloned().collect();
        prop_assert_eq!(&listed, &modelled);
        let suspended = model.values().filter(|m| !m.is_active()).count() as u64;
        prop_assert_eq!(registry.totals().suspended, suspended);
        prop_assert_eq!(registry.totals().total(), model.len() as u64);

        // The journal rebuilds the same registry.
        let mut recovered = Recovered::new(DigestKey::new(7, 9));
        for (seq, (kind, payload)) in records.iter().enumerate() {
            recovered.apply(seq as u64 + 1, *kind, payload).expect("replays");
        }
        let replayed = recovered.merchants();
        replayed.check_invariants();
        let all = MerchantFilter::default();
        let again: Vec<Merchant> = replayed.list(&all, None, 1_000).merchants.into_iter().cloned().collect();
        prop_assert_eq!(again, modelled);
        prop_assert_eq!(
            replayed.counts().collect::<Vec<_>>(),
            registry.counts().collect::<Vec<_>>()
        );
    }
}
