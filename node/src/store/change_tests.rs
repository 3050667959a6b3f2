use std::collections::HashMap;

use super::*;

fn subject(n: u8) -> SubjectId {
    SubjectId::from_slice(&[n; domicile_types::SUBJECT_ID_LEN]).unwrap_or_else(|_| unreachable!())
}

fn link(n: u8) -> Link {
    Link::from_slice(&[n; domicile_types::LINK_LEN]).unwrap_or_else(|_| unreachable!())
}

/// A follower as the proto describes one: REGISTERED maps the links to the subject; ERASED
/// drops those of its links that still name the subject. Checks after every event that each
/// of `watched` names some subject, and returns the final mapping.
fn follow(
    changes: &[(SubjectId, Vec<Link>, Change)],
    start: &[(Link, SubjectId)],
    watched: &[Link],
) -> HashMap<Link, SubjectId> {
    let mut map: HashMap<Link, SubjectId> = start.iter().copied().collect();
    for (at, (subject, links, change)) in changes.iter().enumerate() {
        match change {
            Change::Registered => {
                for l in links {
                    map.insert(*l, *subject);
                }
            }
            Change::Erased => map.retain(|l, s| !(links.contains(l) && s == subject)),
            _ => {}
        }
        for l in watched {
            assert!(map.contains_key(l), "after event {at} a link names no subject");
        }
    }
    map
}

fn record(state: ConsentState, import: Option<bool>) -> ConsentRecord {
    ConsentRecord {
        sequence: 1,
        purpose: Purpose::Marketing,
        channels: vec![Channel::Email, Channel::Sms],
        state,
        captured_at: 1,
        recorded_at: 1,
        expires_at: None,
        evidence: crate::store::Evidence {
            import: import.map(|broadcast| crate::store::ImportEvidence {
                source_system: "crm".into(),
                source_event_id: "e1".into(),
                mapping_version: String::new(),
                broadcast,
            }),
            ..Default::default()
        },
        counted_at_ms: None,
        review: false,
    }
}

#[test]
fn a_grant_is_announced_where_it_takes_force_and_a_refusal_everywhere() {
    let state = |changes: Vec<(SubjectId, Vec<Link>, Change)>| match changes.as_slice() {
        [(_, _, Change::Consent { channels, state, .. })] => Some((channels.clone(), *state)),
        [] => None,
        other => panic!("one consent change expected: {other:?}"),
    };
    let (s, links) = (subject(1), [link(1)]);
    let announce = |record: &ConsentRecord, in_force: &[Channel]| {
        state(Recorded::Consent { subject: s, record, links: &links, in_force }.changes())
    };
    let grant = record(ConsentState::Granted, None);
    assert_eq!(announce(&grant, &[Channel::Sms]), Some((vec![Channel::Sms], ConsentState::Granted)));
    assert_eq!(announce(&grant, &[]), None, "behind a later refusal on every channel: no event");
    assert!(!announced(&grant, &[]));
    let loud = record(ConsentState::Granted, Some(true));
    assert_eq!(announce(&loud, &[Channel::Email, Channel::Sms]).map(|(c, _)| c.len()), Some(2));
    assert_eq!(announce(&record(ConsentState::Granted, Some(false)), &[Channel::Email]), None, "a quiet import");
    let lapsed = ConsentRecord { expires_at: Some(1), ..record(ConsentState::Granted, Some(true)) };
    assert_eq!(announce(&lapsed, &[Channel::Email]), None, "lapsed before it was recorded");
    let withdrawal = record(ConsentState::Withdrawn, Some(false));
    assert_eq!(
        announce(&withdrawal, &[]),
        Some((vec![Channel::Email, Channel::Sms], ConsentState::Withdrawn)),
        "a refusal is announced even where a later grant keeps force"
    );
}

#[test]
fn a_grant_is_announced_with_the_terms_it_holds_under_and_a_refusal_with_none() {
    let terms = |record: &ConsentRecord| {
        let links = [link(1)];
        let changes = Recorded::Consent { subject: subject(1), record, links: &links, in_force: &record.channels };
        match changes.changes().as_slice() {
            [(_, _, Change::Consent { terms, .. })] => terms.clone(),
            other => panic!("one consent change expected: {other:?}"),
        }
    };
    let mut grant = ConsentRecord { expires_at: Some(9_000), ..record(ConsentState::Granted, None) };
    assert_eq!(terms(&grant), GrantTerms { expires_at: Some(9_000), conditional: true }, "double opt-in unconfirmed");
    grant.evidence.double_opt_in_confirmed = true;
    assert_eq!(terms(&grant), GrantTerms { expires_at: Some(9_000), conditional: false });
    grant.evidence.consent_kind = Some("guardian".into());
    assert_eq!(terms(&grant), GrantTerms { expires_at: Some(9_000), conditional: true }, "a kind, not named");
    grant.evidence.consent_kind = Some("express".into());
    grant.evidence.hours = vec!["business".into()];
    assert_eq!(terms(&grant), GrantTerms { expires_at: Some(9_000), conditional: true }, "hours, not named");
    let refusal = ConsentRecord { state: ConsentState::Withdrawn, ..grant };
    assert_eq!(terms(&refusal), GrantTerms::default());
    // Stored events written before terms were kept still read.
    let old = r#"{"Consent":{"purpose":"marketing","channels":["email"],"state":"granted"}}"#;
    let change: Change = serde_json::from_str(old).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(change, Change::Consent { terms, .. } if terms == GrantTerms::default()));
}

#[test]
fn a_merge_never_leaves_a_moved_link_unmapped_at_a_follower() {
    let (into, from) = (subject(1), subject(2));
    let (kept, moved) = (link(1), link(2));
    let (links, all_links) = ([moved], [kept, moved]);
    let consent = [(Purpose::Marketing, ConsentState::Withdrawn, vec![Channel::Email], GrantTerms::default())];
    let merge =
        Recorded::Merge { into, from, links: &links, all_links: &all_links, consent: &consent, restricted: true };
    let map = follow(&merge.changes(), &[(kept, into), (moved, from)], &[kept, moved]);
    assert_eq!((map.get(&kept), map.get(&moved)), (Some(&into), Some(&into)));
}

/// Found by a review: a link new to a subject came with REGISTERED alone, which carries no
/// state over, so a follower held nothing for it where the subject had withdrawn or was
/// restricted (and in an opt-out country sent). It comes with what the subject holds.
#[test]
fn a_link_added_to_a_subject_comes_with_its_consent_and_restriction() {
    let (s, new) = (subject(1), [link(3)]);
    let consent = [(Purpose::Marketing, ConsentState::Withdrawn, vec![Channel::Email], GrantTerms::default())];
    let holding = Holding { consent: &consent, restricted: true };
    let jurisdiction = Jurisdiction::parse("US").unwrap_or_else(|_| unreachable!());
    for recorded in [
        Recorded::Registration { subject: s, jurisdiction: &jurisdiction, identifiers: 2, added: &new, holding },
        Recorded::LinksAdded { subject: s, links: &new, holding },
    ] {
        let changes = recorded.changes();
        let kinds: Vec<&Change> = changes.iter().map(|(_, _, c)| c).collect();
        assert!(matches!(
            kinds.as_slice(),
            [
                Change::Registered,
                Change::Consent { state: ConsentState::Withdrawn, .. },
                Change::Restricted { restricted: true }
            ]
        ));
        assert!(changes.iter().all(|(_, l, _)| l.as_slice() == new), "on the new link only");
    }
    // Nothing added: nothing announced.
    let none = Recorded::LinksAdded { subject: s, links: &[], holding };
    assert!(none.changes().is_empty());
}

/// Found by a review: a merge changes the merged subject's consent in force (a withdrawal of
/// one half outranks a grant of the other) and its restriction, and told only REGISTERED and
/// ERASED, a follower kept the grant on the remaining subject's links.
#[test]
fn a_follower_of_a_merge_holds_the_merged_consent_and_restriction_on_every_link() {
    let (into, from) = (subject(1), subject(2));
    let (own, moved) = (link(1), link(2));
    let (links, all_links) = ([moved], [own, moved]);
    let consent = [(Purpose::Marketing, ConsentState::Withdrawn, vec![Channel::Email], GrantTerms::default())];
    let merge =
        Recorded::Merge { into, from, links: &links, all_links: &all_links, consent: &consent, restricted: true };
    // Before: `own` granted (into's grant), `moved` withdrawn (from's withdrawal).
    let mut state: HashMap<(Link, Channel), ConsentState> = HashMap::from([
        ((own, Channel::Email), ConsentState::Granted),
        ((moved, Channel::Email), ConsentState::Withdrawn),
    ]);
    let mut restricted: HashMap<Link, bool> = HashMap::new();
    for (_, event_links, change) in merge.changes() {
        match change {
            Change::Consent { channels, state: s, .. } => {
                for l in &event_links {
                    for c in &channels {
                        state.insert((*l, *c), s);
                    }
                }
            }
            Change::Restricted { restricted: r } => {
                for l in &event_links {
                    restricted.insert(*l, r);
                }
            }
            _ => {}
        }
    }
    assert_eq!(state.get(&(own, Channel::Email)), Some(&ConsentState::Withdrawn), "the merged state on its own link");
    assert_eq!(restricted.get(&own), Some(&true));
    assert_eq!(restricted.get(&moved), Some(&true));
    // A restriction set or lifted is an event on the subject's links; audited as its request.
    let lifted = Recorded::Restriction { subject: into, links: &all_links, restricted: false };
    assert!(matches!(lifted.changes().as_slice(), [(_, l, Change::Restricted { restricted: false })] if l.len() == 2));
    assert!(matches!(lifted.audit(&"eu-central".parse().unwrap(), 1), Ok(None)));
}

#[test]
fn an_unmerge_never_leaves_a_link_unmapped_at_a_follower() {
    let (merged, kept, restored) = (subject(1), subject(3), subject(4));
    let (a, b) = (link(1), link(2));
    let (kept_links, links) = ([a], [b]);
    let recorded = Recorded::Unmerge {
        merged,
        kept,
        restored,
        was: subject(2),
        links: &links,
        kept_links: &kept_links,
        kept_consent: &[],
        restored_consent: &[],
        restricted: [false, true],
        flagged: 0,
    };
    let map = follow(&recorded.changes(), &[(a, merged), (b, merged)], &[a, b]);
    assert_eq!((map.get(&a), map.get(&b)), (Some(&kept), Some(&restored)));
    // A restriction stays on a half: told on its links only.
    let restrictions: Vec<(SubjectId, Vec<Link>)> = recorded
        .changes()
        .into_iter()
        .filter_map(|(s, l, c)| matches!(c, Change::Restricted { restricted: true }).then_some((s, l)))
        .collect();
    assert_eq!(restrictions, vec![(restored, vec![b])]);
}
