//! The oracle of the one-pass reader (issue 24): the tree-building parser, `validate` and
//! `MapSummary::of`, side by side with `IndexedMap` over the same bytes. Both must accept
//! or refuse alike, with the same message, and give the guards and the diff the same
//! summary: the same models, aliases and cost numbers (bit for bit), and fingerprints that
//! tell the same entries apart (the digests differ in value, not in what they equate).

use std::collections::HashMap;

use costmap_operator::sync::diff::diff;
use costmap_operator::sync::validate::summary::{Costs, MapSummary};
use costmap_operator::sync::validate::{IndexedMap, ModelMap, Rules, guards, validate};

/// The rules the oracle judges under: the defaults, and a last good map's (one model
/// enough), so that the entry rules are reached on small inputs too.
fn rule_sets() -> [Rules; 2] {
    [
        Rules::default(),
        Rules {
            min_models: 1,
            ..Rules::default()
        },
    ]
}

/// Reads `bytes` both ways and asserts the same verdicts; the two summaries (legacy, new)
/// when the bytes parse as a map.
pub fn same_verdicts(bytes: &[u8]) -> Option<(MapSummary, MapSummary)> {
    let legacy = ModelMap::parse(bytes);
    let onepass = IndexedMap::read(bytes);
    match (legacy, onepass) {
        (Err(legacy), Err(onepass)) => {
            assert_eq!(
                legacy.to_string(),
                onepass.to_string(),
                "parse errors differ"
            );
            None
        }
        (Ok(legacy), Ok(onepass)) => {
            assert_eq!(legacy.model_count(), onepass.model_count());
            for rules in rule_sets() {
                assert_eq!(
                    validate(&legacy, &rules).map_err(|err| err.to_string()),
                    onepass.check(&rules).map_err(|err| err.to_string()),
                    "verdicts differ under {rules:?}"
                );
            }
            let legacy = MapSummary::of(&legacy);
            assert_same_summary(&legacy, onepass.summary(), &[]);
            Some((legacy, onepass.summary().clone()))
        }
        (legacy, onepass) => panic!(
            "one accepts, the other refuses: legacy {:?}, one-pass {:?}",
            legacy.map(|_| ()),
            onepass.map(|_| ())
        ),
    }
}

/// The same models, aliases and costs; fingerprints equal exactly where the legacy ones are
/// (over `legacy` and `others` together: pairs of summaries compared across maps).
pub fn assert_same_summary(
    legacy: &MapSummary,
    onepass: &MapSummary,
    others: &[(&MapSummary, &MapSummary)],
) {
    assert_eq!(legacy.model_count(), onepass.model_count());
    let mut forward: HashMap<u64, u64> = HashMap::new();
    let mut backward: HashMap<u64, u64> = HashMap::new();
    for (legacy, onepass) in [(legacy, onepass)]
        .into_iter()
        .chain(others.iter().copied())
    {
        assert_eq!(legacy.model_count(), onepass.model_count());
        for ((name, old), (new_name, new)) in legacy.models().zip(onepass.models()) {
            assert_eq!(name, new_name);
            assert_eq!(old.alias, new.alias, "{name}");
            let bits = |costs: &Costs| {
                costs
                    .iter()
                    .map(|(path, price)| (path.to_owned(), price.to_bits()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(bits(&old.costs), bits(&new.costs), "{name}");
            assert_eq!(
                *forward.entry(old.fingerprint).or_insert(new.fingerprint),
                new.fingerprint,
                "{name}: entries the legacy fingerprint equates, the digest tells apart"
            );
            assert_eq!(
                *backward.entry(new.fingerprint).or_insert(old.fingerprint),
                old.fingerprint,
                "{name}: entries the legacy fingerprint tells apart, the digest equates"
            );
        }
    }
}

/// A transition from `last` to `next` (each as (legacy, new) summaries): the same diff, the
/// same price report and the same guard refusals.
pub fn same_judgement(last: &(MapSummary, MapSummary), next: &(MapSummary, MapSummary)) {
    assert_same_summary(&last.0, &last.1, &[(&next.0, &next.1)]);
    let legacy_report = guards::price_report(&next.0, Some(&last.0));
    let onepass_report = guards::price_report(&next.1, Some(&last.1));
    assert_eq!(legacy_report, onepass_report);
    assert_eq!(
        diff(&last.0, &next.0).with_prices(&legacy_report),
        diff(&last.1, &next.1).with_prices(&onepass_report)
    );
    for rules in rule_sets() {
        assert_eq!(
            guards::refusals(&next.0, Some(&last.0), &legacy_report, &rules),
            guards::refusals(&next.1, Some(&last.1), &onepass_report, &rules)
        );
    }
}
