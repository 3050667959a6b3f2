use std::collections::BTreeMap;

use domicile_types::{
    Channel, ConsentState, IdentifierKind, Jurisdiction, Link, NormalizedIdentifier, Purpose, SubjectId,
};

use super::{Whole, split};
use crate::store::{ConsentRecord, Evidence, LogPositions, MergeLineage, StoreError, SubjectMeta, SubjectRecord};

const A: u8 = 1; // the merged-away subject's links
const B: u8 = 2; // the remaining subject's links

fn link(n: u8) -> Link {
    Link::from_bytes([n; 16])
}

fn subject(n: u8) -> SubjectId {
    SubjectId::from_bytes([n; 16])
}

fn email(name: &str) -> NormalizedIdentifier {
    NormalizedIdentifier::normalize(IdentifierKind::Email, &format!("{name}@example.com")).unwrap()
}

/// A ledger entry at `sequence`, captured (and recorded) at `at` seconds through `via`.
fn entry(sequence: u64, state: ConsentState, channel: Channel, at: i64, via: Option<u8>) -> ConsentRecord {
    ConsentRecord {
        sequence,
        purpose: Purpose::Marketing,
        channels: vec![channel],
        state,
        captured_at: at,
        recorded_at: at,
        expires_at: None,
        evidence: Evidence { captured_via: via.map(link), ..Evidence::default() },
        counted_at_ms: None,
        review: false,
    }
}

fn lineage(from_consent: Vec<u64>, into_consent: Vec<u64>) -> MergeLineage {
    MergeLineage {
        from: subject(9),
        merged_at: 1_000,
        identifiers: vec![email("a")],
        links: vec![link(A)],
        into_links: vec![link(B)],
        into_links_recorded: true,
        profile: BTreeMap::from([("name".to_owned(), "Ann".to_owned())]),
        added_fields: BTreeMap::from([("name".to_owned(), "Ann".to_owned())]),
        from_created_at: 10,
        into_created_at: 20,
        from_restricted: false,
        from_positions: LogPositions { consent: from_consent, ..LogPositions::default() },
        into_positions: LogPositions { consent: into_consent, ..LogPositions::default() },
        nested: Vec::new(),
        added_at: BTreeMap::from([(link(A), 5)]),
    }
}

fn whole(ledger: Vec<ConsentRecord>, lineages: Vec<MergeLineage>) -> Whole {
    Whole {
        meta: SubjectMeta { jurisdiction: Jurisdiction::parse("DE").unwrap(), created_at: 10, restricted: false },
        record: SubjectRecord {
            identifiers: vec![email("b"), email("a")],
            profile: BTreeMap::from([("name".to_owned(), "Ann".to_owned()), ("lang".to_owned(), "de".to_owned())]),
            lineage: lineages,
            added_at: BTreeMap::from([(link(A), 1_000), (link(B), 15)]),
        },
        links: vec![link(B), link(A)],
        ledger,
        interactions: Vec::new(),
        rights: Vec::new(),
    }
}

fn state(half: &super::Half, channel: Channel) -> Option<ConsentState> {
    half.current.get(&(Purpose::Marketing, channel)).map(|c| c.state)
}

#[test]
fn entries_from_before_the_merge_go_back_to_their_half_with_identifiers_links_and_profile() {
    use ConsentState::*;
    // A granted email; B withdrew email later. Merged: withdrawn. Apart: A granted, B withdrawn,
    // as without the merge.
    let ledger =
        vec![entry(1, Granted, Channel::Email, 100, Some(A)), entry(2, Withdrawn, Channel::Email, 200, Some(B))];
    let plan = split(whole(ledger, vec![lineage(vec![1], vec![2])]), &subject(9)).unwrap();
    assert_eq!(state(&plan.restored, Channel::Email), Some(Granted));
    assert_eq!(state(&plan.kept, Channel::Email), Some(Withdrawn));
    assert_eq!(plan.restored.links, vec![link(A)]);
    assert_eq!(plan.kept.links, vec![link(B)]);
    assert_eq!(plan.restored.record.identifiers, vec![email("a")]);
    assert_eq!(plan.kept.record.identifiers, vec![email("b")]);
    // The field the merge added (unchanged since) goes back; the remaining subject's own stays.
    assert_eq!(plan.kept.record.profile.keys().collect::<Vec<_>>(), vec!["lang"]);
    assert_eq!(plan.restored.record.profile["name"], "Ann");
    assert!(plan.kept.record.lineage.is_empty());
    assert_eq!((plan.kept.meta.created_at, plan.restored.meta.created_at), (20, 10));
    // Each half keeps when its identifiers were attached (the challenge quarantine): the
    // restored one as it had them before the merge, not the merge's time.
    assert_eq!(plan.kept.record.added_at, BTreeMap::from([(link(B), 15)]));
    assert_eq!(plan.restored.record.added_at, BTreeMap::from([(link(A), 5)]));
    assert_eq!(plan.flagged, 0);
}

#[test]
fn entries_since_the_merge_follow_the_identifier_they_came_through_or_stay_with_both_flagged() {
    use ConsentState::*;
    let ledger = vec![
        entry(5, Granted, Channel::Email, 500, Some(A)),
        entry(6, Granted, Channel::Sms, 600, Some(B)),
        // Named by ref: whose was it? Flagged, kept with both; a grant counts for neither.
        entry(7, Granted, Channel::Voice, 700, None),
        // A withdrawal named by ref counts for both.
        entry(8, Withdrawn, Channel::Sms, 800, None),
        // Captured through a link neither half had at the merge (an identifier added since):
        // whose? Flagged as well.
        entry(9, Withdrawn, Channel::Post, 900, Some(7)),
    ];
    let plan = split(whole(ledger, vec![lineage(vec![], vec![])]), &subject(9)).unwrap();
    assert_eq!(state(&plan.restored, Channel::Email), Some(Granted));
    assert_eq!(state(&plan.kept, Channel::Email), None);
    assert_eq!(state(&plan.kept, Channel::Sms), Some(Withdrawn));
    assert_eq!(state(&plan.restored, Channel::Sms), Some(Withdrawn));
    assert_eq!(state(&plan.kept, Channel::Voice), None, "a flagged grant is no allow");
    assert_eq!(state(&plan.restored, Channel::Voice), None, "a flagged grant is no allow");
    assert_eq!(state(&plan.kept, Channel::Post), Some(Withdrawn));
    assert_eq!(state(&plan.restored, Channel::Post), Some(Withdrawn));
    assert_eq!(plan.flagged, 3);
    let flagged: Vec<u64> = plan.kept.ledger.iter().filter(|e| e.review).map(|e| e.sequence).collect();
    assert_eq!(flagged, vec![7, 8, 9]);
    assert_eq!(plan.restored.ledger.iter().filter(|e| e.review).count(), 3);
}

#[test]
fn no_half_is_allowed_where_the_merged_subject_was_refused_by_an_entry_of_unknown_origin() {
    use ConsentState::*;
    // Both halves granted before the merge; a withdrawal by ref after it: both stay withdrawn.
    let ledger = vec![
        entry(1, Granted, Channel::Email, 100, Some(A)),
        entry(2, Granted, Channel::Email, 100, Some(B)),
        entry(3, Withdrawn, Channel::Email, 300, None),
    ];
    let plan = split(whole(ledger, vec![lineage(vec![1], vec![2])]), &subject(9)).unwrap();
    for half in [&plan.kept, &plan.restored] {
        assert_eq!(state(half, Channel::Email), Some(Withdrawn));
    }
}

#[test]
fn entries_another_merge_brought_stay_with_the_remaining_subject() {
    use ConsentState::*;
    // A second merge (of subject 8) after the first brought entry 4, recorded by ref.
    let mut second = lineage(vec![4], vec![1, 2]);
    second.from = subject(8);
    second.links = vec![link(3)];
    let ledger = vec![entry(1, Granted, Channel::Email, 100, Some(A)), entry(4, Granted, Channel::Sms, 150, None)];
    let plan = split(whole(ledger, vec![lineage(vec![1], vec![2]), second.clone()]), &subject(9)).unwrap();
    assert_eq!(state(&plan.kept, Channel::Sms), Some(Granted));
    assert_eq!(state(&plan.restored, Channel::Sms), None);
    assert_eq!(plan.flagged, 0);
    assert_eq!(plan.kept.record.lineage, vec![second]);
}

#[test]
fn a_restriction_stays_on_both_halves_and_an_unknown_merge_is_not_found() {
    let mut merged = whole(Vec::new(), vec![lineage(vec![], vec![])]);
    merged.meta.restricted = true;
    let plan = split(merged.clone(), &subject(9)).unwrap();
    assert!(plan.kept.meta.restricted && plan.restored.meta.restricted);
    assert!(matches!(split(merged, &subject(7)), Err(StoreError::NotFound)));
}

#[test]
fn a_replayed_ledger_gives_the_order_appends_give() {
    use ConsentState::*;
    // Arriving out of order: a withdrawal recorded, then an older grant replayed after it.
    let mut replay = entry(2, Granted, Channel::Email, 100, Some(A));
    replay.recorded_at = 400;
    let ledger = vec![entry(1, Withdrawn, Channel::Email, 300, Some(A)), replay];
    let plan = split(whole(ledger, vec![lineage(vec![1, 2], vec![])]), &subject(9)).unwrap();
    assert_eq!(state(&plan.restored, Channel::Email), Some(Withdrawn));
}

#[test]
fn an_entry_both_halves_held_at_the_merge_stays_with_both() {
    use ConsentState::*;
    // Flagged by an earlier unmerge, then the halves merged again: both held position 3.
    let mut flagged = entry(3, Withdrawn, Channel::Sms, 300, None);
    flagged.review = true;
    let plan = split(whole(vec![flagged], vec![lineage(vec![3], vec![3])]), &subject(9)).unwrap();
    for half in [&plan.kept, &plan.restored] {
        assert_eq!(state(half, Channel::Sms), Some(Withdrawn));
        assert!(half.ledger.iter().all(|e| e.review));
    }
}

#[test]
fn a_withdrawal_through_an_identifier_added_since_the_merge_holds_for_both() {
    use ConsentState::*;
    // Ann granted before the merge; a phone added to the merged subject since, a withdrawal
    // through it, then the phone removed (the unmerge refuses while it is held): whose phone?
    // Both halves are withdrawn.
    let ledger =
        vec![entry(1, Granted, Channel::Email, 100, Some(A)), entry(5, Withdrawn, Channel::Email, 500, Some(7))];
    let merged = whole(ledger, vec![lineage(vec![1], vec![])]);
    let plan = split(merged, &subject(9)).unwrap();
    assert_eq!(plan.flagged, 1);
    assert_eq!(state(&plan.restored, Channel::Email), Some(Withdrawn));
    assert_eq!(state(&plan.kept, Channel::Email), Some(Withdrawn));
}

#[test]
fn a_flagged_withdrawal_another_merged_half_shares_stays_with_both() {
    use ConsentState::*;
    // C was merged into A and unmerged (withdrawal 3 kept with both); then A and C were each
    // merged into B. Undoing A's merge must leave 3 with B (and C) too.
    let mut shared = entry(3, Withdrawn, Channel::Email, 300, None);
    shared.review = true;
    let ledger = vec![entry(1, Granted, Channel::Email, 100, Some(3)), shared];
    let mut second = lineage(vec![1, 3], vec![3]);
    second.from = subject(8);
    second.links = vec![link(3)];
    let mut merged = whole(ledger, vec![lineage(vec![3], vec![]), second]);
    merged.links.push(link(3));
    let plan = split(merged, &subject(9)).unwrap();
    assert!(plan.kept.ledger.iter().any(|e| e.sequence == 3));
    assert_eq!(state(&plan.kept, Channel::Email), Some(Withdrawn));
}

#[test]
fn fields_the_merge_added_leave_the_remaining_subject_even_when_changed_since() {
    let mut merged = whole(Vec::new(), vec![lineage(vec![], vec![])]);
    merged.record.profile.insert("name".into(), "Ann Corrected".into());
    let plan = split(merged, &subject(9)).unwrap();
    assert_eq!(plan.kept.record.profile.get("name"), None);
    assert_eq!(plan.restored.record.profile["name"], "Ann");
}

#[test]
fn interactions_of_unknown_origin_are_held_for_review_on_both_halves() {
    let mut merged = whole(Vec::new(), vec![lineage(vec![], vec![])]);
    merged.interactions.push(crate::store::Interaction {
        sequence: 50,
        channel: Channel::Voice,
        occurred_at: 1,
        recorded_at: 1,
        kind: crate::store::InteractionKind::Call,
        intent: "x".into(),
        summary: "a complaint".into(),
        reference: "T-1".into(),
        open: true,
        via: None,
        review: false,
    });
    let plan = split(merged, &subject(9)).unwrap();
    assert!(plan.kept.interactions.iter().chain(&plan.restored.interactions).all(|i| i.review));
    assert_eq!((plan.kept.interactions.len(), plan.restored.interactions.len()), (1, 1));
}

#[test]
fn what_a_rectification_removed_is_gone_from_the_lineage_and_never_comes_back() {
    let mut merged = whole(Vec::new(), vec![lineage(vec![], vec![])]);
    merged.record.forget_identifier(&email("a"));
    merged.record.forget_field("name");
    assert!(merged.record.lineage[0].identifiers.is_empty());
    assert!(merged.record.lineage[0].profile.is_empty());
    let plan = split(merged, &subject(9)).unwrap();
    assert!(plan.restored.record.identifiers.is_empty());
    assert!(!plan.restored.record.profile.contains_key("name"));
}

#[test]
fn an_identifier_attached_since_the_merge_refuses_the_unmerge_rather_than_go_to_either_half() {
    use ConsentState::*;
    // The remaining subject granted SMS before the merge, the merged-away one denied it; a phone
    // attached since (a registration naming it beside the merged-away subject's email). Given to
    // the remaining half, the phone would be allowed SMS on the other person's grant.
    let ledger = vec![entry(1, Granted, Channel::Sms, 100, Some(B)), entry(2, Denied, Channel::Sms, 200, Some(A))];
    let mut merged = whole(ledger.clone(), vec![lineage(vec![2], vec![1])]);
    merged.links.push(link(7));
    assert!(matches!(split(merged, &subject(9)), Err(StoreError::Unattributable)));
    // Links another merge brought are the remaining subject's, not unattributable.
    let mut other = lineage(vec![], vec![1, 2]);
    other.from = subject(8);
    other.links = vec![link(7)];
    let mut merged = whole(ledger.clone(), vec![lineage(vec![2], vec![1]), other]);
    merged.links.push(link(7));
    let plan = split(merged, &subject(9)).unwrap();
    assert!(plan.kept.links.contains(&link(7)));
    assert_eq!(state(&plan.kept, Channel::Sms), Some(Granted));
    assert_eq!(state(&plan.restored, Channel::Sms), Some(Denied));
    // A remaining subject that held no link at the merge (all removed before it): every link it
    // holds now was attached since.
    let mut linkless = lineage(vec![2], vec![1]);
    linkless.into_links = Vec::new();
    let mut merged = whole(ledger.clone(), vec![linkless.clone()]);
    merged.links.retain(|l| *l != link(B));
    merged.links.push(link(7));
    assert!(matches!(split(merged, &subject(9)), Err(StoreError::Unattributable)));
    // A lineage recorded before the remaining subject's links were cannot tell: split as before.
    let mut old = linkless;
    old.into_links_recorded = false;
    let mut merged = whole(ledger, vec![old]);
    merged.links.push(link(7));
    assert!(split(merged, &subject(9)).is_ok());
}

#[test]
fn an_unmerge_announces_each_grant_with_its_terms_and_no_grant_that_has_lapsed() {
    use ConsentState::*;
    // A: a grant on email that lapsed at 500, a grant on SMS until 5,000 of a kind limited to
    // some hours, a plain grant on voice. B: a withdrawal on web. Announced at 1,000.
    let lapsed = ConsentRecord { expires_at: Some(500), ..entry(1, Granted, Channel::Email, 100, Some(A)) };
    let limited = ConsentRecord {
        expires_at: Some(5_000),
        evidence: Evidence {
            captured_via: Some(link(A)),
            consent_kind: Some("implied_purchase".into()),
            hours: vec!["daytime".into()],
            ..Evidence::default()
        },
        ..entry(2, Granted, Channel::Sms, 110, Some(A))
    };
    let mut plain = entry(3, Granted, Channel::Voice, 120, Some(A));
    plain.evidence.double_opt_in_confirmed = true;
    let refusal = entry(4, Withdrawn, Channel::Web, 130, Some(B));
    let plan = split(whole(vec![lapsed, limited, plain, refusal], vec![lineage(vec![1, 2, 3], vec![4])]), &subject(9))
        .unwrap();
    let restored = plan.restored.announced(1_000);
    let conditional = crate::store::GrantTerms { expires_at: Some(5_000), conditional: true };
    let unconditional = crate::store::GrantTerms::default();
    let mut expected = vec![
        (Purpose::Marketing, Granted, vec![Channel::Sms], conditional),
        (Purpose::Marketing, Granted, vec![Channel::Voice], unconditional),
    ];
    expected.sort();
    let mut restored_sorted = restored.clone();
    restored_sorted.sort();
    assert_eq!(restored_sorted, expected, "the lapsed email grant is not announced; each grant keeps its terms");
    // Before the email grant lapsed it is announced, with its expiry.
    assert!(
        plan.restored
            .announced(400)
            .iter()
            .any(|(_, s, c, t)| { *s == Granted && c == &vec![Channel::Email] && t.expires_at == Some(500) })
    );
    // A refusal carries no terms.
    assert_eq!(
        plan.kept.announced(1_000),
        vec![(Purpose::Marketing, Withdrawn, vec![Channel::Web], Default::default())]
    );
}
