//! Rows read ahead and grouped by person before they are cut into calls (`--group`).
//!
//! Why: most of what a region's node spends on a row is spent per subject and call: resolving
//! the subject, reading and rewriting its ledger directory, reading and rewriting each record in
//! force. A subject's rows sent in one call pay those once. A file sorted by time, as exports
//! are, has a person's rows far apart, so calls of consecutive rows almost never hold two rows
//! of one subject. Reading ahead the rows of several batches and putting each person's together
//! made `bench/import.sh`'s files 20–60 % faster in same-hour runs (BENCHMARKS.md).
//!
//! Order: rows that share an identifier, directly or through other rows of the window (whatever
//! their jurisdictions), are one group, kept in file order and in one call unless they are more
//! than a batch (a node applies a call's rows of one subject in the call's order, and the ledger's
//! order breaks ties between records captured at the same time). Groups follow in the order of
//! their first rows. Rows of one person that share no identifier within the window (an email in
//! one, a phone in the other) cannot be told apart from two people's here and may go in either
//! order, as rows in two batches in flight at once always could.
//!
//! Resume: a window's rows are spread over its batches out of file order, so only its last batch
//! carries a checkpoint (the window's last row): no checkpoint falls inside a window, and a
//! re-run after a kill starts at the first row of a window.

use std::collections::HashMap;

use super::driver::{Batch, Checkpoint};
use super::row::{ImportRow, RowError};

/// Rows read and not yet cut into batches.
pub(super) struct Window {
    rows: Vec<ImportRow>,
    refused: Vec<RowError>,
    /// Rows per batch.
    batch: usize,
    /// Batches per window; 1 keeps the rows in file order (one batch, as read).
    batches: usize,
}

impl Window {
    pub(super) fn new(batch: usize, batches: usize) -> Self {
        let batch = batch.max(1);
        let batches = batches.max(1);
        Self { rows: Vec::new(), refused: Vec::new(), batch, batches }
    }

    pub(super) fn push(&mut self, row: Result<ImportRow, RowError>) {
        match row {
            Ok(row) => self.rows.push(row),
            Err(e) => self.refused.push(e),
        }
    }

    /// Whether the window holds a window's rows (refused ones count, as they did in a batch).
    pub(super) fn is_full(&self) -> bool {
        self.rows.len() + self.refused.len() >= self.batch.saturating_mul(self.batches)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.refused.is_empty()
    }

    /// The window's rows as batches (the rows refused while reading with the first), emptying
    /// it; the last batch carries `checkpoint`, the window's end.
    pub(super) fn cut(&mut self, checkpoint: Checkpoint) -> Vec<Batch> {
        let rows = std::mem::take(&mut self.rows);
        let refused = std::mem::take(&mut self.refused);
        let groups = if self.batches == 1 { vec![rows] } else { by_person(rows) };
        let mut batches: Vec<Batch> = Vec::new();
        for group in groups {
            let mut group = group.into_iter().peekable();
            while group.peek().is_some() {
                // A subject's rows start a batch of their own where they would not fit in the one
                // being filled; more than a batch fill whole ones.
                let room = batches.last().map_or(0, |b| self.batch.saturating_sub(b.rows.len()));
                let left = group.len();
                if room == 0 || (left > room && left <= self.batch) {
                    batches.push(Batch { rows: Vec::with_capacity(self.batch), refused: Vec::new(), checkpoint: None });
                }
                if let Some(batch) = batches.last_mut() {
                    let take = self.batch - batch.rows.len();
                    batch.rows.extend(group.by_ref().take(take));
                }
            }
        }
        if batches.is_empty() {
            batches.push(Batch { rows: Vec::new(), refused: Vec::new(), checkpoint: None });
        }
        if let Some(first) = batches.first_mut() {
            first.refused = refused;
        }
        if let Some(last) = batches.last_mut() {
            last.checkpoint = Some(checkpoint);
        }
        batches
    }
}

/// `rows` grouped by person as far as the window shows: rows that share an identifier (kind and
/// value), directly or through other rows, are one group. Each group in file order, the groups
/// in the order of their first rows.
fn by_person(rows: Vec<ImportRow>) -> Vec<Vec<ImportRow>> {
    // Union-find over rows: each identifier joins the row to the first row that named it.
    let mut parent: Vec<usize> = (0..rows.len()).collect();
    let mut first: HashMap<(&str, &str), usize> = HashMap::with_capacity(rows.len());
    for (at, row) in rows.iter().enumerate() {
        for (kind, value) in &row.identifiers {
            match first.get(&(kind.as_str(), value.as_str())) {
                Some(&other) => union(&mut parent, at, other),
                None => {
                    first.insert((kind.as_str(), value.as_str()), at);
                }
            }
        }
    }
    drop(first);
    // The root is always a group's first row (`union` keeps the smaller), so groups come out in
    // the order of their first rows.
    let roots: Vec<usize> = (0..rows.len()).map(|at| find(&mut parent, at)).collect();
    // Per root (a row index), its group's place in `groups`.
    let mut group_of: Vec<Option<usize>> = vec![None; rows.len()];
    let mut groups: Vec<Vec<ImportRow>> = Vec::new();
    for (row, root) in rows.into_iter().zip(roots) {
        match group_of.get_mut(root).and_then(|slot| slot.and_then(|at| groups.get_mut(at))) {
            Some(group) => group.push(row),
            None => {
                if let Some(slot) = group_of.get_mut(root) {
                    *slot = Some(groups.len());
                }
                groups.push(vec![row]);
            }
        }
    }
    groups
}

fn find(parent: &mut [usize], mut at: usize) -> usize {
    let mut root = at;
    while let Some(&up) = parent.get(root).filter(|&&up| up != root) {
        root = up;
    }
    // Path compression: every row on the way points at the root.
    while let Some(slot) = parent.get_mut(at).filter(|slot| **slot != root) {
        at = std::mem::replace(slot, root);
    }
    root
}

/// Joins the groups of rows `a` and `b` under the smaller root (the earlier row).
fn union(parent: &mut [usize], a: usize, b: usize) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    let (keep, join) = if ra < rb { (ra, rb) } else { (rb, ra) };
    if let Some(slot) = parent.get_mut(join) {
        *slot = keep;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(line: usize, subject: usize) -> ImportRow {
        ImportRow {
            line,
            source_system: "test".into(),
            source_event_id: format!("e{line}"),
            identifiers: vec![("email".into(), format!("s{subject}@example.com"))],
            jurisdiction: "DE".into(),
            purpose: domicile_types::Purpose::Marketing,
            channels: vec![domicile_types::Channel::Email],
            action: domicile_types::ConsentAction::Grant,
            captured_at_ms: 0,
            expires_at: None,
            notice_version: String::new(),
        }
    }

    fn lines(batch: &Batch) -> Vec<usize> {
        batch.rows.iter().map(|r| r.line).collect()
    }

    /// Rows of 4 subjects, each every 4th line: grouped, each subject's rows in one batch in
    /// file order, every row once, only the last batch with the checkpoint, the refused row kept.
    #[test]
    fn a_window_puts_each_subjects_rows_together_in_file_order() {
        let mut window = Window::new(3, 4);
        for line in 1..=12 {
            window.push(Ok(row(line, line % 4)));
        }
        window.push(Err(RowError { line: 13, field: "action".into(), reason: "unknown".into() }));
        assert!(window.is_full());
        let batches = window.cut((13, "digest".into()));
        assert!(window.is_empty());
        let cut: Vec<Vec<usize>> = batches.iter().map(lines).collect();
        assert_eq!(cut, vec![vec![1, 5, 9], vec![2, 6, 10], vec![3, 7, 11], vec![4, 8, 12]]);
        assert_eq!(batches[0].refused.len(), 1);
        let checkpoints: Vec<_> = batches.iter().map(|b| b.checkpoint.clone()).collect();
        assert_eq!(checkpoints, vec![None, None, None, Some((13, "digest".to_owned()))]);
    }

    /// A subject's rows that do not fit in the batch being filled start the next one; more than
    /// a batch of one subject fill whole batches; no batch holds more than a batch's rows.
    #[test]
    fn a_subjects_rows_are_split_only_when_more_than_a_batch() {
        let mut window = Window::new(4, 3);
        // Subject 0: lines 1, 2; subject 1: lines 3, 4, 5; subject 2: six rows.
        for (line, subject) in
            [(1, 0), (2, 0), (3, 1), (4, 1), (5, 1), (6, 2), (7, 2), (8, 2), (9, 2), (10, 2), (11, 2)]
        {
            window.push(Ok(row(line, subject)));
        }
        let batches = window.cut((11, String::new()));
        let cut: Vec<Vec<usize>> = batches.iter().map(lines).collect();
        assert_eq!(cut, vec![vec![1, 2], vec![3, 4, 5, 6], vec![7, 8, 9, 10], vec![11]]);
    }

    /// Rows that share an identifier, directly or through another row, stay together and in
    /// file order whatever their jurisdictions and other identifiers: one person's rows under
    /// two subject keys are not reordered against each other.
    #[test]
    fn rows_linked_by_an_identifier_stay_in_file_order() {
        let with = |line: usize, jurisdiction: &str, ids: &[(&str, &str)]| ImportRow {
            jurisdiction: jurisdiction.into(),
            identifiers: ids.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            ..row(line, 0)
        };
        let mut window = Window::new(10, 2);
        window.push(Ok(with(1, "DE", &[("email", "a@example.com")])));
        window.push(Ok(with(2, "DE", &[("phone", "+49301234567")])));
        window.push(Ok(with(3, "US", &[("email", "b@example.com")])));
        // Joins line 2's phone to line 1's email: lines 1, 2 and 5 are one person.
        window.push(Ok(with(4, "FR", &[("phone", "+49301234567"), ("email", "a@example.com")])));
        window.push(Ok(with(5, "DE", &[("email", "a@example.com")])));
        window.push(Ok(with(6, "US", &[("email", "b@example.com")])));
        let batches = window.cut((6, String::new()));
        assert_eq!(batches.iter().map(lines).collect::<Vec<_>>(), vec![vec![1, 2, 4, 5, 3, 6]]);
        let mut window = Window::new(3, 2);
        for line in [1, 2, 3, 4, 5, 6] {
            window.push(Ok(with(line, "DE", &[("email", if line % 2 == 1 { "a@x.example" } else { "b@x.example" })])));
        }
        assert_eq!(
            window.cut((6, String::new())).iter().map(lines).collect::<Vec<_>>(),
            vec![vec![1, 3, 5], vec![2, 4, 6]]
        );
    }

    /// One batch per window keeps the rows as read.
    #[test]
    fn one_batch_per_window_keeps_file_order() {
        let mut window = Window::new(4, 1);
        for line in 1..=4 {
            window.push(Ok(row(line, line % 2)));
        }
        assert!(window.is_full());
        let batches = window.cut((4, String::new()));
        assert_eq!(batches.iter().map(lines).collect::<Vec<_>>(), vec![vec![1, 2, 3, 4]]);
    }

    /// A window of refused rows only is one batch, with the checkpoint.
    #[test]
    fn refused_rows_alone_still_carry_the_checkpoint() {
        let mut window = Window::new(2, 2);
        window.push(Err(RowError { line: 1, field: "captured_at".into(), reason: "not a time".into() }));
        let batches = window.cut((1, "d".into()));
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].refused.len(), 1);
        assert_eq!(batches[0].checkpoint, Some((1, "d".to_owned())));
    }
}
