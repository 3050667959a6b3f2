//! A pack's rules as Cedar policies, and a decision input as a Cedar request: the same rules in
//! the engine a team would otherwise use. Shared (by `#[path]`) by the policy bench, which checks
//! both engines agree on every input before timing them, and by the PostgreSQL + Cedar baseline
//! server (`bench/baseline`). Covers the bases the DE pack uses (no windows, registers or dated
//! rules).

#![allow(
    clippy::expect_used,
    reason = "the Cedar text is generated from closed vocabularies: a parse failure is a bug here"
)]

use std::str::FromStr;

use cedar_policy::{Context, EntityUid, PolicySet, Request, RestrictedExpression};
use domicile_policy::{Basis, DecisionInput, Pack, Rule};
use domicile_types::{Channel, Purpose};

/// The Cedar condition under which `rule` allows (DE has no windows, registers or dated rules).
fn allows(rule: &Rule) -> String {
    let objection = r#"(context.consent == "denied" || context.consent == "withdrawn")"#;
    let consent = r#"(context.consent == "granted" && context.captured_at <= context.at && (context.expires_at == 0 || context.at < context.expires_at))"#;
    match rule.basis {
        Basis::OptOut | Basis::LegitimateInterest => format!("!{objection}"),
        Basis::OptIn => consent.to_owned(),
        Basis::DoubleOptIn => format!("({consent} && context.double_opt_in)"),
        Basis::SoftOptIn => format!(
            "({consent} || (!{objection} && context.contact_from_sale && context.similar_products && context.opt_out_offered))"
        ),
        Basis::Prohibited | Basis::Gap => "false".to_owned(),
    }
}

/// One `permit` per decided cell and one `forbid` per rule and cell unless the rule allows:
/// Cedar's default deny and forbid-overrides-permit then give the pack's semantics exactly.
pub fn policies(pack: &Pack) -> (PolicySet, usize) {
    let mut text = String::new();
    let mut n = 0;
    for &purpose in Purpose::ALL {
        for &channel in Channel::ALL {
            let rules: Vec<&Rule> = pack.rules_for(purpose, channel).collect();
            if rules.is_empty() {
                continue;
            }
            let action = format!(r#"Action::"{purpose}/{channel}""#);
            text.push_str(&format!(
                "@id(\"cell.{purpose}.{channel}\")\npermit(principal, action == {action}, resource);\n"
            ));
            n += 1;
            for rule in rules {
                text.push_str(&format!(
                    "@id(\"{}.{channel}\")\nforbid(principal, action == {action}, resource) unless {{ {} }};\n",
                    rule.id,
                    allows(rule)
                ));
                n += 1;
            }
        }
    }
    (PolicySet::from_str(&text).expect("valid Cedar"), n)
}

pub fn request(input: &DecisionInput) -> Request {
    let c = input.consent.as_ref();
    let state = c.map_or("none", |c| c.state.as_str());
    let pairs = [
        ("at", RestrictedExpression::new_long(input.at_unix)),
        ("consent", RestrictedExpression::new_string(state.to_owned())),
        ("captured_at", RestrictedExpression::new_long(c.map_or(0, |c| c.captured_at_unix))),
        ("expires_at", RestrictedExpression::new_long(c.and_then(|c| c.expires_at_unix).unwrap_or(0))),
        ("double_opt_in", RestrictedExpression::new_bool(c.is_some_and(|c| c.double_opt_in_confirmed))),
        ("contact_from_sale", RestrictedExpression::new_bool(input.facts.contact_from_sale)),
        ("similar_products", RestrictedExpression::new_bool(input.facts.similar_products)),
        ("opt_out_offered", RestrictedExpression::new_bool(input.facts.opt_out_offered)),
    ];
    let context = Context::from_pairs(pairs.into_iter().map(|(k, v)| (k.to_owned(), v))).expect("valid Cedar");
    Request::new(
        EntityUid::from_str(r#"Subject::"s""#).expect("valid Cedar"),
        EntityUid::from_str(&format!(r#"Action::"{}/{}""#, input.purpose, input.channel)).expect("valid Cedar"),
        EntityUid::from_str(r#"Contact::"c""#).expect("valid Cedar"),
        context,
        None,
    )
    .expect("valid Cedar")
}
