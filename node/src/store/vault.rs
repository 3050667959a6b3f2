//! Per-subject data keys, kept where they can really be destroyed.
//!
//! Every subject's personal data is encrypted at rest with its own AES-256-GCM key. Erasure
//! destroys the key (invariant 6). sled is log-structured, so a value deleted from it can linger
//! in old segments; keys therefore live outside sled, in a file of fixed-size slots that erasure
//! overwrites in place with zeros and syncs. Once a slot is zeroed, the subject's ciphertexts in
//! sled — including stale copies — can no longer be decrypted.
//!
//! Overwriting in place relies on the filesystem rewriting the same blocks (true for ext4 and
//! xfs; copy-on-write filesystems such as btrfs or ZFS need the data directory on an encrypted
//! volume whose keys are rotated, see deploy/README.md).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use domicile_types::{SUBJECT_ID_LEN, SubjectId};
use hashbrown::HashMap;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use super::StoreError;

const KEY_LEN: usize = 32;
const SLOT_LEN: usize = SUBJECT_ID_LEN + KEY_LEN;
const NONCE_LEN: usize = 12;
const FILE_NAME: &str = "subject-keys.bin";

/// A subject's data key. Only ever held in memory. Clones share one expanded key (the vault
/// keeps recently used ones: [`KEY_CACHE`]).
#[derive(Clone)]
pub struct SubjectKey(Arc<Material>);

struct Material {
    key: LessSafeKey,
    /// The key's bytes, from which [`SubjectKey::digest`] derives its own key on first use (most
    /// fetches of a key, a decision's or a history's, never make a digest).
    secret: [u8; KEY_LEN],
    digest_key: std::sync::OnceLock<hmac::Key>,
}

/// Subject keys the vault keeps expanded (AES key schedule, and the digest key once derived),
/// about 1 KB each: an import writes each subject's rows in every call that carries some, and
/// expanding its key again each time (the AES schedule, then three HMAC computations for the
/// digest key) was 4 % of a node's CPU. Past this many, each key kept evicts the one kept
/// longest ago (`Inner::order`). Emptying the whole set at once instead, as a first version did,
/// freed 16,384 keys under the vault's lock each time it filled: a region of more subjects than
/// this, decided for at random, made batch decisions 13–23 % slower than expanding every key
/// afresh (BENCHMARKS.md). The raw keys are in memory anyway (`Inner::slots`); erasure drops a
/// subject's entry with its slot.
const KEY_CACHE: usize = 16_384;

impl std::fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectKey(<redacted>)")
    }
}

impl SubjectKey {
    pub(crate) fn from_bytes(bytes: &[u8; KEY_LEN]) -> Result<Self, StoreError> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| StoreError::Corrupt("subject key".into()))?;
        Ok(Self(Arc::new(Material {
            key: LessSafeKey::new(unbound),
            secret: *bytes,
            digest_key: std::sync::OnceLock::new(),
        })))
    }

    /// A keyed digest of `parts` (HMAC-SHA-256 under a key derived from this subject's key,
    /// truncated to 16 bytes): an index key that cannot be tied to what it digests without the
    /// subject's key, nor by anyone once erasure has destroyed it, copies in old files included.
    pub fn digest(&self, domain: &[u8], parts: &[&[u8]]) -> [u8; 16] {
        let key = self.0.digest_key.get_or_init(|| {
            // A key for this use alone, derived from the data key.
            let derived =
                hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &self.0.secret), b"domicile/subject-digest-key/v1");
            hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
        });
        let mut mac = hmac::Context::with_key(key);
        mac.update(domain);
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&mac.sign().as_ref()[..16]);
        out
    }

    /// `nonce ‖ ciphertext ‖ tag`. `context` (e.g. the subject id and record kind) is
    /// authenticated, so a ciphertext cannot be moved to another subject or record.
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        // From the operating system for every seal: a nonce drawn ahead and kept in memory would
        // be handed out twice by two copies of a cloned VM or a restored snapshot, and a repeated
        // nonce under AES-GCM gives away both plaintexts and the key's authenticity.
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| StoreError::Backend("random source failed".into()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .0
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context), &mut out[NONCE_LEN..])
            .map_err(|_| StoreError::Backend("encryption failed".into()))?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(StoreError::Corrupt("sealed record too short".into()));
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| StoreError::Corrupt("nonce".into()))?;
        let mut buffer = body.to_vec();
        let plain = self
            .0
            .key
            .open_in_place(nonce, Aad::from(context), &mut buffer)
            .map_err(|_| StoreError::Corrupt("record fails authentication".into()))?;
        Ok(plain.to_vec())
    }
}

/// Holds every raw key: its `Debug` shows counts only.
struct Inner {
    file: File,
    slots: HashMap<SubjectId, (u64, [u8; KEY_LEN])>,
    /// Expanded keys of recently used subjects ([`KEY_CACHE`]); an entry never outlives its slot.
    expanded: HashMap<SubjectId, SubjectKey>,
    /// The subjects of `expanded` in the order they were kept, a ring of at most [`KEY_CACHE`]:
    /// once full, keeping a key evicts the subject in the slot at `hand` and takes its place.
    /// A slot whose subject was dropped since (erased) evicts nothing; every subject in
    /// `expanded` has a slot, so `expanded` never holds more than the ring.
    order: Vec<SubjectId>,
    hand: usize,
    free: Vec<u64>,
    next: u64,
    /// Slots written since the last sync; consent writes never touch keys, so most flushes
    /// skip this file's fsync.
    dirty: bool,
}

/// The key file of one node.
#[derive(Debug)]
pub struct KeyVault {
    inner: Mutex<Inner>,
}

impl KeyVault {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(FILE_NAME);
        let io = |e: std::io::Error| StoreError::Backend(format!("key file: {e}"));
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&path).map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let mut slots = HashMap::new();
        let mut free = Vec::new();
        // A torn final slot (crash mid-append) is ignored: its subject was never acknowledged.
        let whole = bytes.len() / SLOT_LEN;
        for index in 0..whole {
            let slot = &bytes[index * SLOT_LEN..(index + 1) * SLOT_LEN];
            if slot.iter().all(|b| *b == 0) {
                free.push(index as u64);
                continue;
            }
            let id =
                SubjectId::from_slice(&slot[..SUBJECT_ID_LEN]).map_err(|_| StoreError::Corrupt("key slot".into()))?;
            let mut key = [0u8; KEY_LEN];
            key.copy_from_slice(&slot[SUBJECT_ID_LEN..]);
            slots.insert(id, (index as u64, key));
        }
        Ok(Self {
            inner: Mutex::new(Inner {
                file,
                slots,
                expanded: HashMap::new(),
                order: Vec::new(),
                hand: 0,
                free,
                next: whole as u64,
                dirty: false,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The subject's key, if it exists (it does not after erasure).
    pub fn get(&self, subject: &SubjectId) -> Result<Option<SubjectKey>, StoreError> {
        self.lock().existing(subject)
    }

    /// Returns the subject's key, creating a new one if needed. The new slot is written but not
    /// synced: `sync` (called by the store's flush, before any acknowledgement) makes it durable,
    /// so many registrations share one fsync.
    pub fn get_or_create(&self, subject: &SubjectId) -> Result<SubjectKey, StoreError> {
        let mut inner = self.lock();
        if let Some(key) = inner.existing(subject)? {
            return Ok(key);
        }
        let mut key = [0u8; KEY_LEN];
        SystemRandom::new().fill(&mut key).map_err(|_| StoreError::Backend("random source failed".into()))?;
        let index = match inner.free.pop() {
            Some(i) => i,
            None => {
                let i = inner.next;
                inner.next += 1;
                i
            }
        };
        let mut slot = [0u8; SLOT_LEN];
        slot[..SUBJECT_ID_LEN].copy_from_slice(subject.as_bytes());
        slot[SUBJECT_ID_LEN..].copy_from_slice(&key);
        write_slot(&mut inner.file, index, &slot)?;
        inner.dirty = true;
        inner.slots.insert(*subject, (index, key));
        let key = SubjectKey::from_bytes(&key)?;
        inner.keep(subject, &key);
        Ok(key)
    }

    /// Destroys the subject's key: its slot is overwritten with zeros (durable at the next
    /// `sync`, which precedes the erasure's acknowledgement). Returns whether a key existed.
    pub fn destroy(&self, subject: &SubjectId) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        inner.expanded.remove(subject);
        let Some(&(index, _)) = inner.slots.get(subject) else { return Ok(false) };
        // Forgotten only once the zeros are written: a failed write leaves the key in place, so
        // the erasure fails and a retry writes them, rather than finding no key and reporting
        // the erasure done while the key is still on disk.
        write_slot(&mut inner.file, index, &[0u8; SLOT_LEN])?;
        inner.slots.remove(subject);
        inner.dirty = true;
        inner.free.push(index);
        Ok(true)
    }

    /// Makes every slot write so far durable.
    pub fn sync(&self) -> Result<(), StoreError> {
        let file = {
            let mut inner = self.lock();
            if !inner.dirty {
                return Ok(());
            }
            inner.dirty = false;
            // Clone the handle so the fsync runs without holding the lock; a write racing with
            // it sets `dirty` again and is covered by the next sync.
            inner.file.try_clone().map_err(|e| StoreError::Backend(format!("key file: {e}")))?
        };
        file.sync_data().map_err(|e| {
            self.lock().dirty = true;
            StoreError::Backend(format!("key file: {e}"))
        })
    }

    /// The subjects that have a key.
    pub fn subjects(&self) -> Vec<SubjectId> {
        self.lock().slots.keys().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Raw key bytes, for tests that prove destruction by searching the disk for them.
    #[cfg(test)]
    pub fn raw_key(&self, subject: &SubjectId) -> Option<[u8; KEY_LEN]> {
        self.lock().slots.get(subject).map(|(_, k)| *k)
    }
}

/// What the key file holds, read without opening it for writing (`domicile node check`). Its
/// `Debug` shows counts, not keys.
#[derive(Default)]
pub struct VaultScan {
    /// Live slots: index, subject, key.
    pub slots: Vec<(u64, SubjectId, [u8; KEY_LEN])>,
    /// Slots whose subject part is not a subject id.
    pub unreadable: Vec<u64>,
    /// Bytes after the last whole slot (a slot write cut short, or a truncated file).
    pub trailing: usize,
}

impl VaultScan {
    pub const FILE_NAME: &'static str = FILE_NAME;

    pub fn read(dir: &Path) -> std::io::Result<Self> {
        let bytes = std::fs::read(dir.join(FILE_NAME))?;
        let mut scan = Self { trailing: bytes.len() % SLOT_LEN, ..Self::default() };
        for (index, slot) in bytes.chunks_exact(SLOT_LEN).enumerate() {
            if slot.iter().all(|b| *b == 0) {
                continue;
            }
            let mut key = [0u8; KEY_LEN];
            key.copy_from_slice(&slot[SUBJECT_ID_LEN..]);
            match SubjectId::from_slice(&slot[..SUBJECT_ID_LEN]) {
                Ok(id) => scan.slots.push((index as u64, id, key)),
                Err(_) => scan.unreadable.push(index as u64),
            }
        }
        Ok(scan)
    }
}

impl std::fmt::Debug for VaultScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultScan")
            .field("slots", &self.slots.len())
            .field("unreadable", &self.unreadable)
            .field("trailing", &self.trailing)
            .finish()
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("keys", &self.slots.len())
            .field("expanded", &self.expanded.len())
            .field("free", &self.free.len())
            .field("next", &self.next)
            .field("dirty", &self.dirty)
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// The subject's key if it has a slot: the kept expanded one, else expanded now and kept.
    /// Called under the vault's lock, so a `destroy` cannot fall between reading the slot and
    /// keeping its key (which would leave an erased subject's key kept).
    fn existing(&mut self, subject: &SubjectId) -> Result<Option<SubjectKey>, StoreError> {
        if let Some(key) = self.expanded.get(subject) {
            return Ok(Some(key.clone()));
        }
        let Some((_, bytes)) = self.slots.get(subject) else { return Ok(None) };
        let key = SubjectKey::from_bytes(bytes)?;
        self.keep(subject, &key);
        Ok(Some(key))
    }

    /// Keeps `subject`'s expanded key (not kept yet), evicting the one kept longest ago once
    /// [`KEY_CACHE`] are.
    fn keep(&mut self, subject: &SubjectId, key: &SubjectKey) {
        if self.order.len() < KEY_CACHE {
            self.order.push(*subject);
        } else if let Some(slot) = self.order.get_mut(self.hand) {
            let evicted = std::mem::replace(slot, *subject);
            self.expanded.remove(&evicted);
            self.hand = (self.hand + 1) % KEY_CACHE;
        }
        self.expanded.insert(*subject, key.clone());
    }
}

fn write_slot(file: &mut File, index: u64, slot: &[u8; SLOT_LEN]) -> Result<(), StoreError> {
    let io = |e: std::io::Error| StoreError::Backend(format!("key file: {e}"));
    file.seek(SeekFrom::Start(index * SLOT_LEN as u64)).map_err(io)?;
    file.write_all(slot).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key the vault keeps expanded goes with its slot: once destroyed, neither `get` nor a new
    /// key for the same subject opens what the old one sealed.
    #[test]
    fn a_kept_key_goes_with_its_slot() {
        let dir = tempfile::tempdir().unwrap();
        let vault = KeyVault::open(dir.path()).unwrap();
        let s = SubjectId::from_bytes([7; 16]);
        let sealed = vault.get_or_create(&s).unwrap().seal(b"ctx", b"profile").unwrap();
        // Fetched twice: the second from the kept keys.
        assert_eq!(vault.get(&s).unwrap().unwrap().open(b"ctx", &sealed).unwrap(), b"profile");
        assert_eq!(vault.get(&s).unwrap().unwrap().open(b"ctx", &sealed).unwrap(), b"profile");
        assert!(vault.destroy(&s).unwrap());
        assert!(vault.get(&s).unwrap().is_none(), "a destroyed key is not kept");
        let again = vault.get_or_create(&s).unwrap();
        assert!(again.open(b"ctx", &sealed).is_err(), "a new key, not the destroyed one");
    }

    /// Past `KEY_CACHE` subjects each key kept evicts the one kept longest ago (the set is never
    /// emptied at once), and every subject still gets its own key.
    #[test]
    fn more_subjects_than_kept_keys_each_get_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let vault = KeyVault::open(dir.path()).unwrap();
        let subjects: Vec<SubjectId> =
            (0..KEY_CACHE as u32 + 10).map(|n| SubjectId::from_bytes(u128::from(n + 1).to_be_bytes())).collect();
        let sealed: Vec<Vec<u8>> =
            subjects.iter().map(|s| vault.get_or_create(s).unwrap().seal(b"ctx", s.as_bytes()).unwrap()).collect();
        {
            let inner = vault.lock();
            assert_eq!(inner.expanded.len(), KEY_CACHE, "full, not emptied");
            assert!(subjects[..10].iter().all(|s| !inner.expanded.contains_key(s)), "the ten kept first are evicted");
            assert!(subjects[10..].iter().all(|s| inner.expanded.contains_key(s)), "the later ones stay");
        }
        for (s, sealed) in subjects.iter().zip(&sealed).step_by(97) {
            assert_eq!(vault.get(s).unwrap().unwrap().open(b"ctx", sealed).unwrap(), s.as_bytes());
        }
        let first = subjects[0];
        assert!(
            vault.get(&first).unwrap().unwrap().open(b"ctx", &sealed[sealed.len() - 1]).is_err(),
            "one key for two subjects"
        );
    }

    /// An erased subject's place in the eviction order evicts nothing when its turn comes, and
    /// the kept keys stay within `KEY_CACHE` however many subjects are erased and created.
    #[test]
    fn erasures_between_kept_keys_keep_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let vault = KeyVault::open(dir.path()).unwrap();
        let id = |n: u32| SubjectId::from_bytes(u128::from(n + 1).to_be_bytes());
        for n in 0..KEY_CACHE as u32 {
            vault.get_or_create(&id(n)).unwrap();
            if n % 3 == 0 {
                assert!(vault.destroy(&id(n)).unwrap());
                // Created again: a second place in the order for the same subject.
                vault.get_or_create(&id(n)).unwrap();
            }
        }
        for n in KEY_CACHE as u32..3 * KEY_CACHE as u32 {
            vault.get_or_create(&id(n)).unwrap();
            let inner = vault.lock();
            assert!(inner.expanded.len() <= KEY_CACHE && inner.order.len() <= KEY_CACHE);
            if n % 4096 == 0 {
                assert!(inner.expanded.keys().all(|s| inner.slots.contains_key(s)), "a kept key outlived its slot");
            }
        }
        assert_eq!(vault.lock().expanded.len(), KEY_CACHE);
    }

    /// The vault and a scan of its file print no key, kept expanded or not.
    #[test]
    fn debug_output_holds_no_key() {
        let dir = tempfile::tempdir().unwrap();
        let vault = KeyVault::open(dir.path()).unwrap();
        let s = SubjectId::from_bytes([9; 16]);
        let key = vault.get_or_create(&s).unwrap();
        vault.sync().unwrap();
        let raw = vault.raw_key(&s).unwrap();
        let printed = format!("{vault:?} {key:?} {:?}", VaultScan::read(dir.path()).unwrap());
        let bytes = format!("{raw:?}");
        let inner = bytes.trim_start_matches('[').trim_end_matches(']');
        assert!(!printed.contains(inner), "{printed}");
        assert!(!printed.contains(&hex::encode(raw)), "{printed}");
    }

    #[test]
    fn seal_open_and_destroy() {
        let dir = tempfile::tempdir().unwrap();
        let vault = KeyVault::open(dir.path()).unwrap();
        let s = SubjectId::from_bytes([1; 16]);
        let key = vault.get_or_create(&s).unwrap();
        vault.sync().unwrap();
        let sealed = key.seal(b"ctx", b"secret profile").unwrap();
        assert_eq!(key.open(b"ctx", &sealed).unwrap(), b"secret profile");
        assert!(key.open(b"other-ctx", &sealed).is_err(), "context is authenticated");
        let raw = vault.raw_key(&s).unwrap();

        // Keys survive reopen.
        drop(vault);
        let vault = KeyVault::open(dir.path()).unwrap();
        let key = vault.get(&s).unwrap().unwrap();
        assert_eq!(key.open(b"ctx", &sealed).unwrap(), b"secret profile");

        assert!(vault.destroy(&s).unwrap());
        vault.sync().unwrap();
        assert!(vault.get(&s).unwrap().is_none());
        let file = std::fs::read(dir.path().join(FILE_NAME)).unwrap();
        assert!(!file.windows(KEY_LEN).any(|w| w == raw), "the key bytes are gone from disk");
        drop(vault);
        let vault = KeyVault::open(dir.path()).unwrap();
        assert!(vault.get(&s).unwrap().is_none(), "destruction survives reopen");

        // Freed slots are reused.
        let t = SubjectId::from_bytes([2; 16]);
        vault.get_or_create(&t).unwrap();
        assert_eq!(std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len(), SLOT_LEN as u64);
    }
}
