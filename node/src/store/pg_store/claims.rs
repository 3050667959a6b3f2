//! Identifier claims on PostgreSQL (this region as the arbiter of some links, and as the holder of
//! its own), the queue of claims to give up, and idempotency records.

use std::collections::BTreeMap;

use domicile_types::{Link, RegionId, SubjectId};

use super::prepared::Prepared as _;
use super::unit::Write;
use super::{PgStore, int, pg, subject_id, uint};
use crate::store::codec::{context, encode};
use crate::store::vault::SubjectKey;
use crate::store::{Claim, Held, Idempotency, Recorded, Release, Replay, StoreError};

fn link_bytes(link: &Link) -> &[u8] {
    link.as_bytes().as_slice()
}

fn link_of(bytes: &[u8]) -> Result<Link, StoreError> {
    Link::from_slice(bytes).map_err(|_| StoreError::Corrupt("link".into()))
}

fn region_of(text: &str) -> Result<RegionId, StoreError> {
    RegionId::parse(text).map_err(|_| StoreError::Corrupt("claim region".into()))
}

/// Inside a write: refuses it if its idempotency key was used meanwhile (the caller then
/// replays the earlier result).
pub(super) async fn check_replay(w: &Write<'_>, idempotency: Option<&Idempotency>) -> Result<(), StoreError> {
    let Some(i) = idempotency else { return Ok(()) };
    let found =
        w.tx().query_opt_cached("SELECT 1 FROM idempotency WHERE key = $1", &[&&i.key[..]]).await.map_err(pg)?;
    if found.is_some() { Err(StoreError::Replayed) } else { Ok(()) }
}

/// Inside a write: records its result under its idempotency key, sealed with `sealed_for`'s key
/// (or in the clear when `None`: a result that names no subject's data).
pub(super) async fn record_replay<T: serde::Serialize>(
    w: &Write<'_>,
    idempotency: Option<&Idempotency>,
    sealed_for: Option<(&SubjectId, &SubjectKey)>,
    result: &T,
) -> Result<(), StoreError> {
    let Some(i) = idempotency else { return Ok(()) };
    let (subject, stored) = replay_row(i, sealed_for, result)?;
    w.tx()
        .execute_cached(
            "INSERT INTO idempotency (key, fingerprint, at, subject, result) VALUES ($1, $2, $3, $4, $5)",
            &[&&i.key[..], &&i.fingerprint[..], &i.at, &subject, &stored],
        )
        .await
        .map_err(pg)?;
    Ok(())
}

/// The `subject` and `result` columns of a write's idempotency row.
pub(super) fn replay_row<T: serde::Serialize>(
    i: &Idempotency,
    sealed_for: Option<(&SubjectId, &SubjectKey)>,
    result: &T,
) -> Result<(Option<Vec<u8>>, Vec<u8>), StoreError> {
    let plain = encode(result)?;
    Ok(match sealed_for {
        Some((subject, key)) => {
            (Some(subject.as_bytes().to_vec()), key.seal(&context(b"idempotency", &i.key), &plain)?)
        }
        None => (None, plain),
    })
}

/// Inside a write removing `link` from this region's live links: its claim, if the region holds
/// one, moves to the release queue.
pub(super) async fn release_held(w: &Write<'_>, link: &Link) -> Result<(), StoreError> {
    let row = w
        .tx()
        .query_opt_cached("DELETE FROM held WHERE link = $1 RETURNING generation", &[&link_bytes(link)])
        .await
        .map_err(pg)?;
    if let Some(row) = row {
        let generation: i64 = row.get(0);
        w.tx()
            .execute_cached(
                "INSERT INTO releases (link, generation) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&link_bytes(link), &generation],
            )
            .await
            .map_err(pg)?;
    }
    Ok(())
}

/// Inside a write making `link` live here: records the generation it was claimed with (the
/// highest, should it have been claimed twice).
pub(super) async fn hold(w: &Write<'_>, claim: &Release) -> Result<(), StoreError> {
    w.tx()
        .execute_cached(
            "INSERT INTO held (link, generation) VALUES ($1, $2) \
             ON CONFLICT (link) DO UPDATE SET generation = GREATEST(held.generation, EXCLUDED.generation)",
            &[&link_bytes(&claim.link), &int(claim.generation)],
        )
        .await
        .map_err(pg)?;
    Ok(())
}

impl PgStore {
    pub async fn replay(&self, key: &[u8; 32]) -> Result<Option<Replay>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt_cached("SELECT fingerprint, at, subject, result FROM idempotency WHERE key = $1", &[&&key[..]])
            .await
            .map_err(pg)?;
        let Some(row) = row else { return Ok(None) };
        let fingerprint: [u8; 32] =
            row.get::<_, &[u8]>(0).try_into().map_err(|_| StoreError::Corrupt("idempotency fingerprint".into()))?;
        let stored: Vec<u8> = row.get(3);
        let result = match row.get::<_, Option<&[u8]>>(2) {
            None => Some(stored),
            Some(subject) => match self.key(&client, &subject_id(subject)?).await? {
                Some(subject_key) => Some(subject_key.open(&context(b"idempotency", key), &stored)?),
                // The subject was erased since: its result went with its key.
                None => None,
            },
        };
        Ok(Some(Replay { fingerprint, at: row.get(1), result }))
    }

    pub async fn purge_idempotency(&self, before: i64) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let purged = client.execute_cached("DELETE FROM idempotency WHERE at < $1", &[&before]).await.map_err(pg)?;
        Ok(usize::try_from(purged).unwrap_or(usize::MAX))
    }

    pub async fn next_generation(&self) -> Result<u64, StoreError> {
        self.write(0, async |w| Ok(w.next_generation())).await
    }

    pub async fn claim_links(
        &self,
        region: &RegionId,
        generation: u64,
        links: &[Link],
    ) -> Result<Vec<Option<RegionId>>, StoreError> {
        self.write(0, async |w| {
            let mut out = Vec::with_capacity(links.len());
            for link in links {
                let row = w
                    .tx()
                    .query_opt_cached("SELECT region, generation FROM claims WHERE link = $1", &[&link_bytes(link)])
                    .await
                    .map_err(pg)?;
                let existing = match &row {
                    Some(row) => Some((region_of(row.get(0))?, uint(row.get(1))?)),
                    None => None,
                };
                match existing {
                    Some((holder, _)) if &holder != region => out.push(Some(holder)),
                    // Free, or the region's already: the claim's generation only ever grows, so a
                    // release delayed from an earlier attempt cannot undo this one.
                    other => {
                        let generation = other.map_or(generation, |(_, g)| g.max(generation));
                        w.tx()
                            .execute_cached(
                                "INSERT INTO claims (link, region, generation) VALUES ($1, $2, $3) \
                                 ON CONFLICT (link) DO UPDATE SET region = EXCLUDED.region, generation = \
                                 EXCLUDED.generation",
                                &[&link_bytes(link), &region.as_str(), &int(generation)],
                            )
                            .await
                            .map_err(pg)?;
                        out.push(None);
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    pub async fn release_links(&self, region: &RegionId, releases: &[Release]) -> Result<usize, StoreError> {
        self.write(0, async |w| {
            let mut released = 0;
            for release in releases {
                released += w
                    .tx()
                    .execute_cached(
                        "DELETE FROM claims WHERE link = $1 AND region = $2 AND generation <= $3",
                        &[&link_bytes(&release.link), &region.as_str(), &int(release.generation)],
                    )
                    .await
                    .map_err(pg)?;
            }
            Ok(usize::try_from(released).unwrap_or(usize::MAX))
        })
        .await
    }

    pub async fn claim(&self, link: &Link) -> Result<Option<Claim>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt_cached("SELECT region, generation FROM claims WHERE link = $1", &[&link_bytes(link)])
            .await
            .map_err(pg)?;
        row.map(|row| Ok(Claim { region: region_of(row.get(0))?, generation: uint(row.get(1))? })).transpose()
    }

    /// Claims in link order, `limit` after `after` (keyset pages, for listing them all).
    pub async fn claims_page(&self, after: Option<Link>, limit: i64) -> Result<Vec<(Link, Claim)>, StoreError> {
        let client = self.client().await?;
        let after = after.map(|l| l.as_bytes().to_vec()).unwrap_or_default();
        let rows = client
            .query_cached(
                "SELECT link, region, generation FROM claims WHERE link > $1 ORDER BY link LIMIT $2",
                &[&after, &limit],
            )
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|row| {
                Ok((link_of(row.get(0))?, Claim { region: region_of(row.get(1))?, generation: uint(row.get(2))? }))
            })
            .collect()
    }

    pub async fn pending_releases(&self, limit: usize) -> Result<Vec<Release>, StoreError> {
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query_cached("SELECT link, generation FROM releases ORDER BY link, generation LIMIT $1", &[&limit])
            .await
            .map_err(pg)?;
        rows.iter().map(|row| Ok(Release { link: link_of(row.get(0))?, generation: uint(row.get(1))? })).collect()
    }

    pub async fn queue_releases(&self, releases: &[Release]) -> Result<(), StoreError> {
        self.write(0, async |w| {
            for release in releases {
                w.tx()
                    .execute_cached(
                        "INSERT INTO releases (link, generation) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                        &[&link_bytes(&release.link), &int(release.generation)],
                    )
                    .await
                    .map_err(pg)?;
            }
            Ok(())
        })
        .await
    }

    pub async fn releases_done(&self, releases: &[Release]) -> Result<(), StoreError> {
        self.write(0, async |w| {
            for release in releases {
                w.tx()
                    .execute_cached(
                        "DELETE FROM releases WHERE link = $1 AND generation = $2",
                        &[&link_bytes(&release.link), &int(release.generation)],
                    )
                    .await
                    .map_err(pg)?;
            }
            Ok(())
        })
        .await
    }

    pub async fn pending_release_count(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client.query_one_cached("SELECT count(*) FROM releases", &[]).await.map_err(pg)?;
        uint(row.get(0))
    }

    pub async fn held_claim(&self, link: &Link) -> Result<Option<u64>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt_cached("SELECT generation FROM held WHERE link = $1", &[&link_bytes(link)])
            .await
            .map_err(pg)?;
        row.map(|row| uint(row.get(0))).transpose()
    }

    pub async fn hold_claims(&self, claims: &[Release], announce: bool, now: i64) -> Result<Held, StoreError> {
        self.write(now, async |w| {
            let mut by_subject: BTreeMap<SubjectId, Vec<Link>> = BTreeMap::new();
            let mut outcome = Held::default();
            for claim in claims {
                let row = w
                    .tx()
                    .query_opt_cached("SELECT subject FROM links WHERE link = $1", &[&link_bytes(&claim.link)])
                    .await
                    .map_err(pg)?;
                match row {
                    Some(row) => {
                        by_subject.entry(subject_id(row.get(0))?).or_default().push(claim.link);
                        outcome.held.push(claim.link);
                        hold(w, claim).await?;
                    }
                    None => {
                        outcome.gone.push(*claim);
                        w.tx()
                            .execute_cached(
                                "INSERT INTO releases (link, generation) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                                &[&link_bytes(&claim.link), &int(claim.generation)],
                            )
                            .await
                            .map_err(pg)?;
                    }
                }
            }
            if announce {
                let recorded: Vec<Recorded<'_>> = by_subject
                    .iter()
                    .map(|(subject, links)| Recorded::Announced { subject: *subject, links })
                    .collect();
                outcome.announced = recorded.len();
                // Nothing is audited: no subject changes (`Recorded::Announced`).
                outcome.event = w.record(&recorded).await?;
            }
            Ok(outcome)
        })
        .await
    }
}
