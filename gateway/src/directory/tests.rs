use super::*;

fn region(s: &str) -> RegionId {
    RegionId::parse(s).unwrap()
}

#[test]
fn misses_fail_closed_until_every_region_is_loaded() {
    let dir = Directory::new(vec![region("eu-central"), region("us-east")]);
    let link = Link::from_bytes([1; 16]);
    assert_eq!(dir.lookup(&link), Err(Miss::Incomplete));
    dir.mark_synced(&region("eu-central"));
    assert_eq!(dir.lookup(&link), Err(Miss::Incomplete));
    dir.mark_synced(&region("us-east"));
    assert_eq!(dir.lookup(&link), Err(Miss::Unknown));
    let subject = SubjectRef { region: region("us-east"), id: SubjectId::from_bytes([2; 16]) };
    assert!(dir.insert(&subject, &[link]));
    assert_eq!(dir.lookup(&link), Ok(subject));
    let stranger = SubjectRef { region: region("ap-south"), id: SubjectId::from_bytes([3; 16]) };
    assert!(!dir.insert(&stranger, &[Link::from_bytes([4; 16])]));
}

#[test]
fn erasure_events_drop_only_links_still_naming_the_subject() {
    let dir = Directory::new(vec![region("eu-central")]);
    let anna = SubjectRef { region: region("eu-central"), id: SubjectId::from_bytes([1; 16]) };
    let bert = SubjectRef { region: region("eu-central"), id: SubjectId::from_bytes([2; 16]) };
    let (a, b) = (Link::from_bytes([7; 16]), Link::from_bytes([8; 16]));
    dir.insert(&anna, &[a, b]);
    // `b` moved to bert after anna's erasure (replayed out of order): it must survive.
    dir.insert(&bert, &[b]);
    assert_eq!(dir.remove_subject_links(&anna, &[a, b]), 1);
    assert_eq!(dir.lookup(&b), Ok(bert));
    assert!(dir.lookup(&a).is_err());
}

/// Links spread like the keyed hashes they are, so the bucket index is really used: every
/// stored link is found (first in the array, then after changes folded in), and links near
/// them (same bucket, neighbouring buckets, the extremes) are not.
#[test]
fn bucketed_lookups_find_exactly_the_stored_links() {
    let eu = region("eu-central");
    let dir = Directory::new(vec![eu.clone()]);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut random_link = || {
        let mut bytes = [0u8; 16];
        for half in bytes.chunks_mut(8) {
            // splitmix64
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            half.copy_from_slice(&(z ^ (z >> 31)).to_be_bytes());
        }
        Link::from_bytes(bytes)
    };
    let stored: Vec<Link> = (0..20_000).map(|_| random_link()).collect();
    let subject = |i: usize| SubjectId::from_bytes([(i % 251) as u8; 16]);
    dir.begin_load(&eu);
    dir.load_batch(&eu, stored.iter().enumerate().map(|(i, l)| (*l, subject(i))));
    dir.mark_synced(&eu);
    let neighbour = |link: &Link, delta: i128| {
        Link::from_bytes((u128::from_be_bytes(*link.as_bytes()) as i128).wrapping_add(delta).to_be_bytes())
    };
    let check = |dir: &Directory, stored: &[Link]| {
        let present: HashSet<Link> = stored.iter().copied().collect();
        for (i, link) in stored.iter().enumerate() {
            assert_eq!(dir.lookup(link).map(|s| s.id), Ok(subject(i)));
            for delta in [-1, 1, 1 << 100, -(1 << 100)] {
                let near = neighbour(link, delta);
                if !present.contains(&near) {
                    assert_eq!(dir.lookup(&near), Err(Miss::Unknown));
                }
            }
        }
        for edge in [[0u8; 16], [0xff; 16]] {
            assert_eq!(dir.lookup(&Link::from_bytes(edge)), Err(Miss::Unknown));
        }
    };
    check(&dir, &stored);
    // New links beyond the fold threshold, so the array and its index are rebuilt.
    let more: Vec<Link> = (0..5_000).map(|_| random_link()).collect();
    for (i, link) in more.iter().enumerate() {
        dir.insert(&SubjectRef { region: eu.clone(), id: subject(20_000 + i) }, &[*link]);
    }
    let all: Vec<Link> = stored.iter().chain(&more).copied().collect();
    check(&dir, &all);
    assert_eq!(dir.len(), 25_000);
}

/// Snapshots arrive as interleaved batches from parallel scans (and, for robustness, in any
/// order); a second region's snapshot merges into the first's; changes recorded while a
/// snapshot loads, or pending when the next one merges, stay newer than the snapshots.
#[test]
fn interleaved_snapshot_batches_and_a_second_region_merge_correctly() {
    let (eu, us) = (region("eu-central"), region("us-east"));
    let dir = Directory::new(vec![eu.clone(), us.clone()]);
    let link = |i: u32| {
        // Spread over the first byte like keyed hashes.
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&i.wrapping_mul(0x9E37_79B1).to_be_bytes());
        Link::from_bytes(bytes)
    };
    let id = |i: u32| SubjectId::from_bytes([(i % 7) as u8; 16]);
    let sorted_batches = |range: std::ops::Range<u32>| {
        let mut links: Vec<(Link, SubjectId)> = range.map(|i| (link(i), id(i))).collect();
        links.sort_unstable_by_key(|x| x.0);
        let (low, high): (Vec<_>, Vec<_>) = links.into_iter().partition(|(l, _)| l.as_bytes()[0] < 0x80);
        (low, high)
    };
    dir.begin_load(&eu);
    let (low, high) = sorted_batches(0..10_000);
    // Two parts scanned side by side: their batches alternate until both are done.
    let (mut low, mut high) = (low.chunks(1000), high.chunks(1000));
    loop {
        let (a, b) = (low.next(), high.next());
        if a.is_none() && b.is_none() {
            break;
        }
        for batch in [a, b].into_iter().flatten() {
            dir.load_batch(&eu, batch.iter().copied());
        }
    }
    // A registration recorded during the load stays newer than the snapshot.
    let moved = SubjectRef { region: eu.clone(), id: SubjectId::from_bytes([9; 16]) };
    dir.insert(&moved, &[link(5)]);
    dir.mark_synced(&eu);
    // An erasure after it, pending in the change map while the next region merges in.
    assert_eq!(dir.remove(&[link(6)]), 1);
    dir.begin_load(&us);
    // Batches in no useful order at all.
    let (low, high) = sorted_batches(10_000..12_000);
    dir.load_batch(&us, high.iter().rev().copied());
    dir.load_batch(&us, low.iter().copied());
    dir.mark_synced(&us);
    for i in 0..12_000 {
        let expected = match i {
            5 => Ok(moved.clone()),
            6 => Err(Miss::Unknown),
            i if i < 10_000 => Ok(SubjectRef { region: eu.clone(), id: id(i) }),
            i => Ok(SubjectRef { region: us.clone(), id: id(i) }),
        };
        assert_eq!(dir.lookup(&link(i)), expected, "link {i}");
    }
    assert_eq!(dir.lookup(&link(12_000)), Err(Miss::Unknown));
    assert_eq!(dir.len(), 11_999);
}

/// Memory per link at a million links, the goal being 64 bytes: the sorted array
/// costs 34 bytes per link, its bucket index about one, plus the change map's share.
#[test]
fn a_million_links_cost_under_64_bytes_each_and_changes_fold_in() {
    let eu = region("eu-central");
    let dir = Directory::new(vec![eu.clone()]);
    let link = |i: u32| {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&i.to_be_bytes());
        Link::from_bytes(bytes)
    };
    dir.begin_load(&eu);
    dir.load_batch(&eu, (0u32..1_000_000).rev().map(|i| (link(i), SubjectId::from_bytes([1; 16]))));
    assert!(dir.lookup(&link(7)).is_err(), "a snapshot is invisible until the region is synced");
    dir.mark_synced(&eu);
    assert_eq!(dir.len(), 1_000_000);
    let per_link = dir.table_bytes() / dir.len();
    println!("directory: {} links, {} bytes per link", dir.len(), per_link);
    assert!(per_link <= 64, "{per_link} bytes per link");

    // Enough changes to fold the change map into the array several times.
    let anna = SubjectRef { region: eu.clone(), id: SubjectId::from_bytes([2; 16]) };
    for i in 0..200_000u32 {
        dir.insert(&anna, &[link(2_000_000 + i)]);
        dir.remove(&[link(i)]);
    }
    assert_eq!(dir.len(), 1_000_000);
    assert_eq!(dir.lookup(&link(2_000_001)), Ok(anna));
    assert_eq!(dir.lookup(&link(5)), Err(Miss::Unknown));
    assert_eq!(dir.lookup(&link(999_999)).map(|s| s.id), Ok(SubjectId::from_bytes([1; 16])));
    assert!(dir.table_bytes() / dir.len() <= 64);
}

#[test]
fn a_reply_no_newer_than_the_events_applied_changes_nothing() {
    let eu = region("eu-central");
    let subject = |n: u8| SubjectId::from_bytes([n; 16]);
    let link = |n: u8| Link::from_bytes([n; 16]);
    let dir = Directory::new(vec![eu.clone()]);
    let (first, owner) =
        (SubjectRef { region: eu.clone(), id: subject(1) }, SubjectRef { region: eu.clone(), id: subject(2) });
    let l = link(7);
    dir.mark_synced(&eu);
    // Events: registered to `first` (5), removed from it (6), registered to `owner` (7).
    dir.apply_event(&eu, 5, Update::Map(&first, &[l]));
    dir.apply_event(&eu, 6, Update::Unmap(&first, &[l]));
    dir.apply_event(&eu, 7, Update::Map(&owner, &[l]));
    // A replayed reply of the registration at 5 is older than what the events said since.
    assert!(!dir.apply_reply(&eu, Some(5), Update::Map(&first, &[l])));
    assert_eq!(dir.lookup(&l).unwrap(), owner);
    // A reply with no event changes nothing; a reply newer than the events applied does.
    assert!(!dir.apply_reply(&eu, Some(0), Update::Map(&first, &[l])));
    assert!(!dir.apply_reply(&eu, None, Update::Map(&first, &[l])));
    assert!(dir.apply_reply(&eu, Some(8), Update::Unmap(&owner, &[l])));
    assert_eq!(dir.lookup(&l), Err(Miss::Unknown));
    // A snapshot as of 20 counts as applied.
    dir.set_applied(&eu, Some(20));
    assert!(!dir.apply_reply(&eu, Some(19), Update::Map(&first, &[l])));
}

/// Found by a review: two regions' snapshots that disagree on a link (one dropped it in an
/// ownership repair after the other's was taken) left the link to the region loaded last, so
/// decisions went to the copy that region's next event removed, and once it did, the link named
/// nobody. Now the link is incomplete (fail closed) until an event for it settles which holds.
#[test]
fn a_link_two_snapshots_disagree_on_is_settled_by_the_next_event_for_it() {
    let (eu, us) = (region("eu-central"), region("us-east"));
    let link = Link::from_bytes([9; 16]);
    let dropped = SubjectRef { region: eu.clone(), id: SubjectId::from_bytes([1; 16]) };
    let kept = SubjectRef { region: us.clone(), id: SubjectId::from_bytes([2; 16]) };
    let load = |dir: &Directory, subject: &SubjectRef| {
        dir.begin_load(&subject.region);
        dir.load_batch(&subject.region, [(link, subject.id)]);
        dir.mark_synced(&subject.region);
    };
    for settled_by_eu in [true, false] {
        let dir = Directory::new(vec![eu.clone(), us.clone()]);
        load(&dir, &kept);
        load(&dir, &dropped);
        assert_eq!(dir.lookup(&link), Err(Miss::Incomplete), "contested: neither region's copy is used");
        if settled_by_eu {
            // The region that dropped the link says so: the other's copy holds.
            dir.apply_event(&eu, 101, Update::Unmap(&dropped, &[link]));
            assert_eq!(dir.lookup(&link), Ok(kept.clone()));
        } else {
            // The other way round: the copy loaded first is the one removed.
            dir.apply_event(&us, 7, Update::Unmap(&kept, &[link]));
            assert_eq!(dir.lookup(&link), Ok(dropped.clone()));
        }
    }
}

/// Found by a second review: a replayed reply applied while its region was still loading won
/// over the snapshot taken after it; and a link another region's event had already removed hid
/// the next region's snapshot entry behind its tombstone (or left it contested for ever).
#[test]
fn replies_wait_for_the_region_and_a_removal_elsewhere_never_hides_a_snapshot() {
    let (eu, us) = (region("eu-central"), region("us-east"));
    let link = Link::from_bytes([5; 16]);
    let subject = |region: &RegionId, n: u8| SubjectRef { region: region.clone(), id: SubjectId::from_bytes([n; 16]) };
    let load = |dir: &Directory, subject: &SubjectRef, as_of: u64| {
        dir.begin_load(&subject.region);
        dir.load_batch(&subject.region, [(link, subject.id)]);
        dir.set_applied(&subject.region, Some(as_of));
        dir.mark_synced(&subject.region);
    };
    // A replayed registration (event 5) arrives while eu loads; its snapshot (as of 20) holds.
    let dir = Directory::new(vec![eu.clone(), us.clone()]);
    assert!(!dir.apply_reply(&eu, Some(5), Update::Map(&subject(&eu, 1), &[link])), "not before eu is synced");
    load(&dir, &subject(&eu, 2), 20);
    assert_eq!(dir.lookup(&link), Ok(subject(&eu, 2)));

    // eu's copy is removed before us's snapshot (holding the link) merges: us's holds.
    let dir = Directory::new(vec![eu.clone(), us.clone()]);
    load(&dir, &subject(&eu, 1), 100);
    dir.apply_event(&eu, 101, Update::Unmap(&subject(&eu, 1), &[link]));
    load(&dir, &subject(&us, 3), 7);
    assert_eq!(dir.lookup(&link), Ok(subject(&us, 3)));

    // eu maps the link by an event (in `delta`), then us's snapshot holds it too: contested,
    // until eu's removal settles it for us.
    let dir = Directory::new(vec![eu.clone(), us.clone()]);
    load(&dir, &subject(&eu, 1), 100);
    dir.apply_event(&eu, 101, Update::Map(&subject(&eu, 4), &[link]));
    load(&dir, &subject(&us, 3), 7);
    assert_eq!(dir.lookup(&link), Err(Miss::Incomplete));
    dir.apply_event(&eu, 102, Update::Unmap(&subject(&eu, 4), &[link]));
    assert_eq!(dir.lookup(&link), Ok(subject(&us, 3)));
}
