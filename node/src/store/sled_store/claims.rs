//! Identifier claims (this node as the arbiter of some links, and as the holder of its own), the
//! queue of claims to give up, and idempotency records.
//!
//! A claim value is the claim's generation (8 bytes, big-endian) followed by the holding region's
//! id. A release key is the link followed by the generation it was claimed with.

use std::collections::BTreeMap;

use domicile_types::{LINK_LEN, Link, RegionId, SubjectId};
use sled::Transactional;
use sled::transaction::TransactionalTree;

use super::{
    Claim, Held, Idempotency, Recorded, Release, Replay, SledStore, StoreError, SubjectKey, TxResult, abort, backend,
    decode, encode, flatten, or_abort,
};

fn claim_value(region: &RegionId, generation: u64) -> Vec<u8> {
    let mut value = Vec::with_capacity(8 + region.as_str().len());
    value.extend_from_slice(&generation.to_be_bytes());
    value.extend_from_slice(region.as_str().as_bytes());
    value
}

fn parse_claim(value: &[u8]) -> Result<Claim, StoreError> {
    let corrupt = || StoreError::Corrupt("claim entry".into());
    let (generation, region) = value.split_at_checked(8).ok_or_else(corrupt)?;
    let generation = u64::from_be_bytes(generation.try_into().map_err(|_| corrupt())?);
    let region = std::str::from_utf8(region).ok().and_then(|r| RegionId::parse(r).ok()).ok_or_else(corrupt)?;
    Ok(Claim { region, generation })
}

pub(super) fn release_key(release: &Release) -> [u8; LINK_LEN + 8] {
    let mut key = [0u8; LINK_LEN + 8];
    key[..LINK_LEN].copy_from_slice(release.link.as_bytes());
    key[LINK_LEN..].copy_from_slice(&release.generation.to_be_bytes());
    key
}

fn parse_release(key: &[u8]) -> Result<Release, StoreError> {
    let corrupt = || StoreError::Corrupt("release entry".into());
    let (link, generation) = key.split_at_checked(LINK_LEN).ok_or_else(corrupt)?;
    Ok(Release {
        link: Link::from_slice(link).map_err(|_| corrupt())?,
        generation: u64::from_be_bytes(generation.try_into().map_err(|_| corrupt())?),
    })
}

/// The generation this region's claim on a live link was granted with (`held` value).
pub(super) fn parse_generation(value: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(value).map(u64::from_be_bytes).map_err(|_| StoreError::Corrupt("held entry".into()))
}

/// Inside a transaction that removes `link` from this region's live links: its claim, if the
/// region holds one, moves to the release queue.
pub(super) fn release_held(held: &TransactionalTree, releases: &TransactionalTree, link: &Link) -> TxResult<()> {
    if let Some(value) = held.remove(&link.as_bytes()[..])? {
        let generation = or_abort(parse_generation(&value))?;
        releases.insert(&release_key(&Release { link: *link, generation })[..], &[][..])?;
    }
    Ok(())
}

/// Inside a transaction that makes `link` live here: records the generation it was claimed with
/// (the highest, should it have been claimed twice).
pub(super) fn hold(held: &TransactionalTree, claim: &Release) -> TxResult<()> {
    let generation = match held.get(&claim.link.as_bytes()[..])? {
        Some(value) => or_abort(parse_generation(&value))?.max(claim.generation),
        None => claim.generation,
    };
    held.insert(&claim.link.as_bytes()[..], &generation.to_be_bytes()[..])?;
    Ok(())
}

/// An idempotency record: the request's fingerprint, when, and the write's result, sealed with
/// its subject's key unless the subject is gone (an erasure's).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ReplayEntry {
    fingerprint: String,
    at: i64,
    subject: Option<SubjectId>,
    result: String,
}

/// Inside a write's transaction: refuses it if its idempotency key was used meanwhile (the
/// caller then replays the earlier result).
pub(super) fn check_replay(tree: &TransactionalTree, idempotency: Option<&Idempotency>) -> TxResult<()> {
    match idempotency {
        Some(i) if tree.get(&i.key[..])?.is_some() => abort(StoreError::Replayed),
        _ => Ok(()),
    }
}

/// Inside a write's transaction: records its result under its idempotency key, sealed with
/// `sealed_for`'s key (or in the clear when `None`: a result that names no subject's data).
pub(super) fn record_replay<T: serde::Serialize>(
    tree: &TransactionalTree,
    idempotency: Option<&Idempotency>,
    sealed_for: Option<(&SubjectId, &SubjectKey)>,
    result: &T,
) -> TxResult<()> {
    let Some(i) = idempotency else { return Ok(()) };
    let plain = or_abort(encode(result))?;
    let (subject, bytes) = match sealed_for {
        Some((subject, key)) => (Some(*subject), or_abort(key.seal(&super::context(b"idempotency", &i.key), &plain))?),
        None => (None, plain),
    };
    let entry = ReplayEntry { fingerprint: hex::encode(i.fingerprint), at: i.at, subject, result: hex::encode(bytes) };
    tree.insert(&i.key[..], or_abort(encode(&entry))?)?;
    Ok(())
}

/// Claims of `claims` in link order, at most `limit` after `after`.
pub(super) fn read_claims(
    claims: &sled::Tree,
    after: Option<Link>,
    limit: usize,
) -> Result<Vec<(Link, Claim)>, StoreError> {
    let range = match after {
        Some(link) => {
            claims.range::<&[u8], _>((std::ops::Bound::Excluded(&link.as_bytes()[..]), std::ops::Bound::Unbounded))
        }
        None => claims.iter(),
    };
    range
        .take(limit)
        .map(|item| {
            let (key, value) = item.map_err(backend)?;
            let link = Link::from_slice(&key).map_err(|_| StoreError::Corrupt("claim key".into()))?;
            Ok((link, parse_claim(&value)?))
        })
        .collect()
}

impl SledStore {
    pub(super) fn grant_claims(
        &self,
        region: &RegionId,
        generation: u64,
        links: &[Link],
    ) -> Result<Vec<Option<RegionId>>, StoreError> {
        let result = self.claims.transaction(|claims| {
            let mut out = Vec::with_capacity(links.len());
            for link in links {
                let existing = match claims.get(&link.as_bytes()[..])? {
                    Some(value) => Some(or_abort(parse_claim(&value))?),
                    None => None,
                };
                match existing {
                    Some(claim) if &claim.region != region => out.push(Some(claim.region)),
                    // Free, or the region's already: the claim's generation only ever grows, so a
                    // release delayed from an earlier attempt cannot undo this one.
                    other => {
                        let generation = other.map_or(generation, |c| c.generation.max(generation));
                        claims.insert(&link.as_bytes()[..], claim_value(region, generation))?;
                        out.push(None);
                    }
                }
            }
            Ok(out)
        });
        flatten(result)
    }

    pub(super) fn give_up_claims(&self, region: &RegionId, releases: &[Release]) -> Result<usize, StoreError> {
        let result = self.claims.transaction(|claims| {
            let mut released = 0;
            for release in releases {
                let Some(value) = claims.get(&release.link.as_bytes()[..])? else { continue };
                let claim = or_abort(parse_claim(&value))?;
                if &claim.region == region && claim.generation <= release.generation {
                    claims.remove(&release.link.as_bytes()[..])?;
                    released += 1;
                }
            }
            Ok(released)
        });
        flatten(result)
    }

    pub(super) fn read_claim(&self, link: &Link) -> Result<Option<Claim>, StoreError> {
        match self.claims.get(link.as_bytes()).map_err(backend)? {
            Some(value) => parse_claim(&value).map(Some),
            None => Ok(None),
        }
    }

    pub(super) fn read_held(&self, link: &Link) -> Result<Option<u64>, StoreError> {
        match self.held.get(link.as_bytes()).map_err(backend)? {
            Some(value) => parse_generation(&value).map(Some),
            None => Ok(None),
        }
    }

    pub(super) fn hold_granted(&self, claims: &[Release], announce: bool, now: i64) -> Result<Held, StoreError> {
        // Every writer takes this lock: which subject holds each link cannot change until the
        // transaction below has committed, so the events name the right subjects.
        let _serial = self.serialise_writes(&[]);
        let mut by_subject: BTreeMap<SubjectId, Vec<Link>> = BTreeMap::new();
        let mut outcome = Held::default();
        for claim in claims {
            match self.subject_by_link_raw(&claim.link)? {
                Some(subject) => {
                    by_subject.entry(subject).or_default().push(claim.link);
                    outcome.held.push(claim.link);
                }
                None => outcome.gone.push(*claim),
            }
        }
        let recorded: Vec<Recorded<'_>> = if announce {
            by_subject.iter().map(|(subject, links)| Recorded::Announced { subject: *subject, links }).collect()
        } else {
            Vec::new()
        };
        // Nothing is audited: no subject changes (`Recorded::Announced`).
        let events = self.events_of(&recorded, now)?;
        let result = (&self.links, &self.held, &self.releases, &self.events, &self.event_index).transaction(
            |(links, held, releases, events_tree, event_index)| {
                for claim in claims {
                    if live_subject(links, &claim.link)?.is_some() {
                        hold(held, claim)?;
                    } else {
                        releases.insert(&release_key(claim)[..], &[][..])?;
                    }
                }
                super::retire::put_events(events_tree, event_index, &events)
            },
        );
        flatten(result)?;
        outcome.announced = events.len();
        outcome.event = events.last().map(|e| e.sequence);
        Ok(outcome)
    }

    pub(super) fn read_releases(&self, limit: usize) -> Result<Vec<Release>, StoreError> {
        self.releases.iter().keys().take(limit).map(|key| parse_release(&key.map_err(backend)?)).collect()
    }

    pub(super) fn add_releases(&self, releases: &[Release]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for release in releases {
            batch.insert(&release_key(release)[..], &[][..]);
        }
        self.releases.apply_batch(batch).map_err(backend)
    }

    pub(super) fn remove_releases(&self, releases: &[Release]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for release in releases {
            batch.remove(&release_key(release)[..]);
        }
        self.releases.apply_batch(batch).map_err(backend)
    }

    pub(super) fn read_replay(&self, key: &[u8; 32]) -> Result<Option<Replay>, StoreError> {
        let Some(bytes) = self.idempotency.get(key).map_err(backend)? else { return Ok(None) };
        let entry: ReplayEntry = decode(&bytes)?;
        let corrupt = || StoreError::Corrupt("idempotency entry".into());
        let fingerprint: [u8; 32] =
            hex::decode(&entry.fingerprint).ok().and_then(|f| f.try_into().ok()).ok_or_else(corrupt)?;
        let stored = hex::decode(&entry.result).map_err(|_| corrupt())?;
        let result = match entry.subject {
            None => Some(stored),
            Some(subject) => match self.vault.get(&subject)? {
                Some(subject_key) => Some(subject_key.open(&super::context(b"idempotency", key), &stored)?),
                // The subject was erased since: its result went with its key.
                None => None,
            },
        };
        Ok(Some(Replay { fingerprint, at: entry.at, result }))
    }

    pub(super) fn purge_replays(&self, before: i64) -> Result<usize, StoreError> {
        let mut batch = sled::Batch::default();
        let mut purged = 0;
        for item in self.idempotency.iter() {
            let (key, value) = item.map_err(backend)?;
            let entry: ReplayEntry = decode(&value)?;
            if entry.at < before {
                batch.remove(key);
                purged += 1;
            }
        }
        self.idempotency.apply_batch(batch).map_err(backend)?;
        Ok(purged)
    }
}

/// `(link, subject)` pairs of `links` whose link starts with a byte in `first_bytes`, at most
/// `limit` after `after`, in link order.
pub(super) fn read_links(
    links: &sled::Tree,
    first_bytes: std::ops::RangeInclusive<u8>,
    after: Option<Link>,
    limit: usize,
) -> Result<Vec<(Link, SubjectId)>, StoreError> {
    let (first, last) = first_bytes.into_inner();
    if first > last {
        return Ok(Vec::new());
    }
    // Keys are 16-byte links: [first] sorts before every link starting with `first`, and
    // [last + 1] after every link starting with `last`.
    let start = match after {
        Some(link) => std::ops::Bound::Excluded(link.as_bytes().to_vec()),
        None => std::ops::Bound::Included(vec![first]),
    };
    let end = match last.checked_add(1) {
        Some(end) => std::ops::Bound::Excluded(vec![end]),
        None => std::ops::Bound::Unbounded,
    };
    links
        .range::<Vec<u8>, _>((start, end))
        .take(limit)
        .map(|item| {
            let (key, value) = item.map_err(backend)?;
            let link = Link::from_slice(&key).map_err(|_| StoreError::Corrupt("link key".into()))?;
            let subject = SubjectId::from_slice(&value).map_err(|_| StoreError::Corrupt("link entry".into()))?;
            Ok((link, subject))
        })
        .collect()
}

/// Inside a transaction: the subject a live link names.
pub(super) fn live_subject(links: &sled::transaction::TransactionalTree, link: &Link) -> TxResult<Option<SubjectId>> {
    match links.get(&link.as_bytes()[..])? {
        None => Ok(None),
        Some(value) => match SubjectId::from_slice(&value) {
            Ok(id) => Ok(Some(id)),
            Err(_) => abort(StoreError::Corrupt("link entry".into())),
        },
    }
}
