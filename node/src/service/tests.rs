use super::context::context_of;
use super::follow::link_scan_parts;
use super::wire::{free_text, token};
use crate::store::{Interaction, InteractionKind};
use domicile_types::Channel;

#[test]
fn link_scan_parts_cover_every_first_byte_once() {
    for parts in [1, 2, 3, 4, 7, 256, 1000] {
        let ranges = link_scan_parts(parts);
        assert_eq!(ranges.len(), parts.min(256));
        let covered: Vec<u8> = ranges.iter().flat_map(|r| r.clone()).collect();
        assert_eq!(covered, (0..=255).collect::<Vec<u8>>(), "{parts} parts");
    }
}

fn at(sequence: u64, channel: Channel, occurred_at: i64, intent: &str, open: bool) -> Interaction {
    Interaction {
        sequence,
        channel,
        occurred_at,
        recorded_at: occurred_at,
        kind: InteractionKind::Message,
        intent: intent.into(),
        summary: format!("summary {sequence}"),
        reference: String::new(),
        open,
        via: None,
        review: false,
    }
}

#[test]
fn context_shows_latest_per_channel_and_open_intents() {
    let log = vec![
        at(1, Channel::Web, 10, "billing.dispute", true),
        at(2, Channel::Chat, 20, "billing.dispute", true),
        at(3, Channel::Chat, 30, "delivery.status", true),
        // Recorded last but happened before: sorts by occurrence.
        at(4, Channel::Voice, 15, "billing.dispute", false),
        at(5, Channel::Email, 25, "address.change", false),
    ];
    let (latest, open, recent) = context_of(log, 3);
    let seqs = |v: &[Interaction]| v.iter().map(|i| i.sequence).collect::<Vec<_>>();
    assert_eq!(seqs(&latest), [3, 5, 4, 1], "one per channel, newest first");
    // billing.dispute's latest (chat at 20) is open; address.change closed.
    assert_eq!(open, ["delivery.status", "billing.dispute"]);
    assert_eq!(seqs(&recent), [3, 5, 2]);
}

#[test]
fn tokens_and_free_text_are_checked_without_echoing() {
    assert!(token("intent", "billing.dispute", 64).is_ok());
    for bad in ["", "Billing", "a b", &"x".repeat(65)] {
        let err = token("intent", bad, 64).unwrap_err().to_string();
        assert!(err.contains("intent"), "{err}");
        assert!(bad.is_empty() || !err.contains(bad), "{err}");
    }
    assert!(free_text("summary", "line one\nline two\ttab", 2048).is_ok());
    assert!(free_text("summary", "bell\u{7}", 2048).is_err());
    assert!(free_text("summary", &"x".repeat(2049), 2048).is_err());
}
