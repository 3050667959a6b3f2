//! Bulk import of consent from other systems (issue 22, item 3), on a real cluster. Through the
//! gateway's `ImportConsent`: each entry goes to its subject's home region, keeps its original
//! capture time, is marked imported and names its source in the history; the same source event
//! sent again is a duplicate (in one call, in a later call, after a kill of the importer or of a
//! region's node); an opt-out wins over a
//! grant captured at the same time; a dry run writes nothing; watchers hear nothing unless asked;
//! a bad item is refused alone, naming its field, never its value. Through `domicile import`: every
//! supported format's sample file imported twice gives the state of one run, with a receipt per
//! row, and a malformed row is reported by line and field while the rest is imported.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use std::time::Duration;

use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::{Cluster as _, TestCluster, identifier, select_ref};
use domicile_proto::prost_types::Timestamp;
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");

fn at(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

fn item(id: u64, subject: &str, action: common::ConsentAction, captured: i64, event: &str) -> gw::ImportConsentItem {
    gw::ImportConsentItem {
        id,
        subject: select_ref(subject),
        purpose: "marketing".into(),
        channels: vec!["email".into()],
        action: action as i32,
        evidence: Some(common::Evidence {
            notice_version: "legacy-notice-7".into(),
            source_system: "legacy-crm".into(),
            ..Default::default()
        }),
        captured_at: at(captured),
        source_system: "legacy-crm".into(),
        source_event_id: event.into(),
        ..Default::default()
    }
}

fn request(items: Vec<gw::ImportConsentItem>) -> gw::ImportConsentRequest {
    gw::ImportConsentRequest { items, mapping_version: "map-2026.12".into(), ..Default::default() }
}

type Result = Option<gw::import_consent_outcome::Result>;

/// The next consent change event a watcher gets.
async fn next_consent(watch: &mut tonic::Streaming<gw::WatchEvent>) -> common::ChangeEvent {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let event = watch.message().await.unwrap().unwrap().event.unwrap();
            if event.kind == common::ChangeKind::Consent as i32 {
                return event;
            }
        }
    })
    .await
    .expect("a consent event")
}

fn accepted(r: &Result) -> bool {
    matches!(r, Some(gw::import_consent_outcome::Result::Accepted(s)) if *s > 0)
}

fn duplicate(r: &Result) -> bool {
    matches!(r, Some(gw::import_consent_outcome::Result::Duplicate(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_entries_are_applied_once_keep_their_evidence_and_stay_quiet() {
    let cluster = TestCluster::start_on_env_store(BIN, &["eu-central", "us-east"]).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let register = |jurisdiction: &str, email: &str| gw::RegisterRequest {
        jurisdiction: jurisdiction.into(),
        identifiers: vec![identifier("email", email)],
        ..Default::default()
    };
    let de = client.register(register("DE", "import.de@example.com")).await.unwrap().into_inner().subject_ref;
    let us = client.register(register("US", "import.us@example.com")).await.unwrap().into_inner().subject_ref;
    assert!(de.starts_with("eu-central/") && us.starts_with("us-east/"));
    let mut watch = client.watch(gw::WatchRequest::default()).await.unwrap().into_inner();
    let now = domicile_runtime::process::now_unix();
    let (old, older) = (now - 400 * 86_400, now - 800 * 86_400);

    // A dry run checks and writes nothing.
    let mut dry = request(vec![item(1, &de, common::ConsentAction::Grant, old, "evt-1")]);
    dry.dry_run = true;
    let outcomes = client.import_consent(dry).await.unwrap().into_inner().outcomes;
    assert!(matches!(outcomes[0].result, Some(gw::import_consent_outcome::Result::Accepted(0))), "{outcomes:?}");
    assert!(cluster.history_at_home(select_ref(&de)).await.unwrap().entries.is_empty(), "a dry run wrote");

    // One call with entries for two regions, a repeat of one event, and a bad item.
    let mut bad = item(5, &de, common::ConsentAction::Grant, old, "evt-bad");
    bad.purpose = "jane@example.com".into();
    let mut no_source = item(6, &de, common::ConsentAction::Grant, old, "");
    no_source.source_event_id = String::new();
    // No capture time: never taken as "now" (it would outrank every earlier withdrawal).
    let mut no_time = item(7, &de, common::ConsentAction::Grant, old, "evt-no-time");
    no_time.captured_at = None;
    let items = vec![
        item(1, &de, common::ConsentAction::Grant, older, "evt-1"),
        item(2, &us, common::ConsentAction::Grant, old, "evt-2"),
        item(3, &de, common::ConsentAction::Grant, older, "evt-1"),
        // An opt-out captured at the same instant as a grant: the opt-out wins.
        item(4, &us, common::ConsentAction::Withdraw, old, "evt-4"),
        bad,
        no_source,
        no_time,
    ];
    let outcomes = client.import_consent(request(items)).await.unwrap().into_inner().outcomes;
    let ids: Vec<u64> = outcomes.iter().map(|o| o.id).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5, 6, 7], "one outcome per item, in order");
    assert!(
        accepted(&outcomes[0].result) && accepted(&outcomes[1].result) && accepted(&outcomes[3].result),
        "{outcomes:?}"
    );
    assert!(duplicate(&outcomes[2].result), "the same event twice in one call: {outcomes:?}");
    for (i, field) in [(4, "purpose"), (5, "source_event_id"), (6, "captured_at")] {
        match &outcomes[i].result {
            Some(gw::import_consent_outcome::Result::Refused(e)) => {
                assert_eq!(e.code, Code::InvalidArgument as i32, "{e:?}");
                assert!(e.message.contains(field) && !e.message.contains("jane"), "{e:?}");
            }
            other => panic!("item {i} was not refused: {other:?}"),
        }
    }

    // The same events again, later: duplicates, nothing written.
    let again = vec![
        item(1, &de, common::ConsentAction::Grant, older, "evt-1"),
        item(2, &us, common::ConsentAction::Grant, old, "evt-2"),
    ];
    let outcomes = client.import_consent(request(again)).await.unwrap().into_inner().outcomes;
    assert!(outcomes.iter().all(|o| duplicate(&o.result)), "{outcomes:?}");
    let de_history = cluster.history_at_home(select_ref(&de)).await.unwrap();
    assert_eq!(de_history.entries.len(), 1, "one entry per source event");
    let entry = &de_history.entries[0];
    assert_eq!(entry.captured_at.as_ref().map(|t| t.seconds), Some(older), "the original capture time is kept");
    assert_eq!(entry.evidence.as_ref().map(|e| e.notice_version.as_str()), Some("legacy-notice-7"));
    assert_eq!(cluster.history_at_home(select_ref(&us)).await.unwrap().entries.len(), 2);

    // Decisions follow: DE (opt-in) allows on the imported grant, US withdrew at the same instant.
    let decide = |subject: &str| gw::DecideRequest {
        subject: select_ref(subject),
        purpose: "marketing".into(),
        channel: "email".into(),
        ..Default::default()
    };
    let d = client.decide(decide(&de)).await.unwrap().into_inner().decision.unwrap();
    assert_eq!(d.effect, common::Effect::Allow as i32, "{}", d.explanation);
    let d = client.decide(decide(&us)).await.unwrap().into_inner().decision.unwrap();
    assert_eq!(d.effect, common::Effect::Deny as i32, "the opt-out wins a tie: {}", d.explanation);

    // Watchers heard the registrations and the imported withdrawal (a follower's suppression
    // list must learn of an opt-out), not the imported grants.
    let mut consent_events = Vec::new();
    while let Ok(Some(Ok(event))) =
        tokio::time::timeout(Duration::from_millis(1500), watch.message()).await.map(|m| m.transpose())
    {
        if let Some(event) = event.event.filter(|e| e.kind == common::ChangeKind::Consent as i32) {
            consent_events.push(event.state);
        }
    }
    assert_eq!(consent_events, ["withdrawn"], "imported grants were announced, or the withdrawal was not");
    // With broadcast grants are too.
    let mut loud = request(vec![item(7, &de, common::ConsentAction::Grant, now - 60, "evt-7")]);
    loud.broadcast = true;
    assert!(accepted(&client.import_consent(loud).await.unwrap().into_inner().outcomes[0].result));
    let event = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let event = watch.message().await.unwrap().unwrap().event.unwrap();
            if event.kind == common::ChangeKind::Consent as i32 {
                return event;
            }
        }
    })
    .await
    .expect("a broadcast import is announced");
    assert_eq!(event.state, "granted");
    // A broadcast grant the ledger's order puts behind a later withdrawal (older history arriving
    // late) changes no decision, and is not announced: a follower told "granted" would send
    // where every decision refuses. The next consent event a watcher gets is the sentinel's.
    let loud = |items| gw::ImportConsentRequest { broadcast: true, ..request(items) };
    let withdrawal = loud(vec![item(11, &de, common::ConsentAction::Withdraw, now - 30, "evt-11")]);
    assert!(accepted(&client.import_consent(withdrawal).await.unwrap().into_inner().outcomes[0].result));
    assert_eq!(next_consent(&mut watch).await.state, "withdrawn");
    let late_grant = loud(vec![item(12, &de, common::ConsentAction::Grant, now - 45, "evt-12")]);
    assert!(accepted(&client.import_consent(late_grant).await.unwrap().into_inner().outcomes[0].result));
    let sentinel = loud(vec![item(13, &us, common::ConsentAction::Withdraw, now - 30, "evt-13")]);
    assert!(accepted(&client.import_consent(sentinel).await.unwrap().into_inner().outcomes[0].result));
    let event = next_consent(&mut watch).await;
    assert_eq!((event.subject_ref.as_str(), event.state.as_str()), (us.as_str(), "withdrawn"), "{event:?}");
    let d = client.decide(decide(&de)).await.unwrap().into_inner().decision.unwrap();
    assert_eq!(d.effect, common::Effect::Deny as i32, "the later withdrawal holds: {}", d.explanation);

    // The same event id under another subject is that subject's own event, not a duplicate; an
    // event repeated within one call is answered with its first copy's outcome.
    let outcomes = client
        .import_consent(request(vec![item(8, &us, common::ConsentAction::Grant, older, "evt-1")]))
        .await
        .unwrap()
        .into_inner()
        .outcomes;
    assert!(accepted(&outcomes[0].result), "another subject's event id blocked this one: {outcomes:?}");
    let outcomes = client
        .import_consent(request(vec![
            item(9, &us, common::ConsentAction::Withdraw, older + 1, "evt-9"),
            item(10, &us, common::ConsentAction::Grant, older + 1, "evt-9"),
        ]))
        .await
        .unwrap()
        .into_inner()
        .outcomes;
    assert!(accepted(&outcomes[0].result), "{outcomes:?}");
    assert!(duplicate(&outcomes[1].result), "a repeat in one call takes the first copy's outcome: {outcomes:?}");
}

/// Several runs of one batch at once (a re-run started while the first still runs): a node
/// writes a call's subjects together, so runs race over whole batches. Every event is written
/// once whichever run gets there first, the others answer it as a duplicate, none refuses it,
/// and each subject's ledger holds each event once, in both regions of the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_of_one_batch_write_each_event_once() {
    const SUBJECTS: usize = 40;
    const RUNS: usize = 4;
    const ROUNDS: i64 = 6;
    let cluster = TestCluster::start_on_env_store(BIN, &["eu-central", "us-east"]).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let mut subjects = Vec::new();
    for n in 0..SUBJECTS {
        let jurisdiction = if n % 2 == 0 { "DE" } else { "US" };
        let request = gw::RegisterRequest {
            jurisdiction: jurisdiction.into(),
            identifiers: vec![identifier("email", &format!("race{n}@example.com"))],
            ..Default::default()
        };
        subjects.push(client.register(request).await.unwrap().into_inner().subject_ref);
    }
    let old = domicile_runtime::process::now_unix() - 400 * 86_400;
    let batch = |events: &[i64]| {
        let mut items = Vec::new();
        for (n, subject) in subjects.iter().enumerate() {
            for &e in events {
                let action = if e % 2 == 0 { common::ConsentAction::Withdraw } else { common::ConsentAction::Grant };
                items.push(item(items.len() as u64, subject, action, old + e, &format!("race-{n}-{e}")));
            }
        }
        request(items)
    };
    // Event 0 is written first, so the racing runs carry written and new events alike.
    let first = client.import_consent(batch(&[0])).await.unwrap().into_inner().outcomes;
    assert!(first.iter().all(|o| accepted(&o.result)), "{first:?}");

    for round in 0..ROUNDS {
        let events = [0, 2 * round + 1, 2 * round + 2];
        let runs: Vec<_> = (0..RUNS)
            .map(|_| {
                let mut client = client.clone();
                let request = batch(&events);
                tokio::spawn(async move { client.import_consent(request).await.map(|r| r.into_inner().outcomes) })
            })
            .collect();
        let mut outcomes_per_run: Vec<Vec<gw::ImportConsentOutcome>> = Vec::new();
        for run in runs {
            outcomes_per_run.push(run.await.unwrap().expect("each run is answered"));
        }
        for position in 0..SUBJECTS * events.len() {
            let outcomes: Vec<&Result> = outcomes_per_run.iter().map(|outcomes| &outcomes[position].result).collect();
            let written = outcomes.iter().filter(|r| accepted(r)).count();
            let repeated = outcomes.iter().filter(|r| duplicate(r)).count();
            let expected = usize::from(position % events.len() != 0);
            assert_eq!(
                (written, repeated),
                (expected, RUNS - expected),
                "round {round}, item {position}: {outcomes:?}"
            );
        }
    }
    for subject in &subjects {
        let history = cluster.history_at_home(select_ref(subject)).await.unwrap();
        assert_eq!(history.entries.len(), 1 + 2 * ROUNDS as usize, "each event once in the ledger");
        let decision = client
            .decide(gw::DecideRequest {
                subject: select_ref(subject),
                purpose: "marketing".into(),
                channel: "email".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .decision
            .unwrap();
        assert_eq!(decision.effect, common::Effect::Deny as i32, "the latest event withdrew: {}", decision.explanation);
    }
}

fn domicile(args: &[String]) -> (i32, String, String) {
    let out = std::process::Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn import_args(
    cluster: &TestCluster,
    tls: &domicile_runtime::tls::TlsFiles,
    format: &str,
    file: &std::path::Path,
    receipts: &std::path::Path,
    extra: &[&str],
) -> Vec<String> {
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cli/tests/import-samples");
    let mut args: Vec<String> = vec![
        "import".into(),
        "--format".into(),
        format.into(),
        "--mapping".into(),
        samples.join("mapping.toml").display().to_string(),
        "--receipts".into(),
        receipts.display().to_string(),
        "--gateway".into(),
        cluster.gateway_addr().to_string(),
        "--ca".into(),
        tls.ca.display().to_string(),
        "--cert".into(),
        tls.cert.display().to_string(),
        "--key".into(),
        tls.key.display().to_string(),
        "--quiet".into(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.push(file.display().to_string());
    args
}

/// The receipts written so far; a line still being written (no newline yet) is not one.
fn receipts_of(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn count(receipts: &[serde_json::Value], status: &str) -> usize {
    receipts.iter().filter(|r| r["status"] == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_imports_once_with_a_receipt_per_row_and_malformed_rows_named() {
    let cluster =
        TestCluster::start_on_env_store(BIN, &["eu-central", "us-east", "ap-northeast"]).await.expect("cluster starts");
    let tls = importer_tls(&cluster);
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cli/tests/import-samples");
    let dir = tempfile::tempdir().unwrap();
    for (format, file) in [
        ("ndjson", "domicile.ndjson"),
        ("onetrust", "onetrust.json"),
        ("fides", "fides.json"),
        ("transcend", "transcend.csv"),
        ("ketch", "ketch.ndjson"),
    ] {
        let source = samples.join(file);
        // A dry run first: nothing written, every row answered.
        let dry = dir.path().join(format!("{format}.dry.ndjson"));
        let (code, _, err) = domicile(&import_args(&cluster, &tls, format, &source, &dry, &["--dry-run"]));
        assert!(code == 0 || code == 1, "{format} dry run: {err}");
        let first = dir.path().join(format!("{format}.1.ndjson"));
        let (code, _, err) = domicile(&import_args(&cluster, &tls, format, &source, &first, &[]));
        let one = receipts_of(&first);
        assert!(code == 0 || code == 1, "{format}: {err}");
        assert!(count(&one, "accepted") > 0, "{format}: nothing accepted: {one:?} {err}");
        assert_eq!(receipts_of(&dry).len(), one.len(), "{format}: the dry run answers every row");
        assert_eq!(count(&receipts_of(&dry), "refused"), count(&one, "refused"), "{format}: the dry run refuses alike");
        for receipt in &one {
            assert!(receipt["line"].as_u64().is_some_and(|l| l > 0), "{format}: {receipt}");
            let text = receipt.to_string();
            assert!(!text.contains("@example") && !text.contains("+44"), "{format}: a receipt carries a value: {text}");
            if receipt["status"] == "refused" {
                assert!(!receipt["reason"].as_str().unwrap_or_default().is_empty(), "{format}: {receipt}");
            }
        }
        // Every sample has a malformed row in the middle, refused by line and field, and rows
        // after it imported.
        let refused: Vec<&serde_json::Value> = one.iter().filter(|r| r["status"] == "refused").collect();
        assert!(!refused.is_empty(), "{format}: the malformed row was not reported");
        let last_refused = refused.iter().filter_map(|r| r["line"].as_u64()).max().unwrap();
        assert!(
            one.iter()
                .any(|r| r["status"] == "accepted" && r["line"].as_u64() > Some(refused[0]["line"].as_u64().unwrap())),
            "{format}: nothing after the malformed row (line {last_refused}) was imported: {one:?}"
        );
        // The same file again: nothing new, the same rows refused.
        let second = dir.path().join(format!("{format}.2.ndjson"));
        let (code, _, err) = domicile(&import_args(&cluster, &tls, format, &source, &second, &[]));
        assert!(code == 0 || code == 1, "{format} again: {err}");
        let two = receipts_of(&second);
        assert_eq!(count(&two, "accepted"), 0, "{format}: a second run wrote again: {two:?}");
        assert_eq!(count(&two, "duplicate"), count(&one, "accepted") + count(&one, "duplicate"), "{format}");
        assert_eq!(count(&two, "refused"), count(&one, "refused"), "{format}");
        // The checkpoint counts rows in reading order, not lines (a JSON array on one line puts
        // every record on line 1; one record may give several rows): resuming after 3 rows sends
        // exactly the others.
        let third = dir.path().join(format!("{format}.3.ndjson"));
        std::fs::write(dir.path().join(format!("{format}.3.ndjson.checkpoint")), "3\n").unwrap();
        let (_, _, err) = domicile(&import_args(&cluster, &tls, format, &source, &third, &[]));
        assert!(err.contains(", 3 before the checkpoint"), "{format}: {err}");
        assert_eq!(receipts_of(&third).len(), one.len() - 3, "{format}: {err}");
    }
    // A decision for an imported subject names the imported evidence in its history.
    let mut client = cluster.gateway().await.unwrap();
    let anna = client
        .resolve(gw::ResolveRequest { identifier: Some(identifier("email", "anna.schmidt@example.com")) })
        .await
        .expect("imported subject registered")
        .into_inner();
    let history = cluster.history_at_home(select_ref(&anna.subject_ref)).await.unwrap();
    // (She is in the Domicile NDJSON and the OneTrust samples: each entry names its source.)
    let sources: Vec<&str> =
        history.entries.iter().map(|e| e.evidence.as_ref().map_or("", |ev| ev.source_system.as_str())).collect();
    assert!(sources.iter().all(|s| ["crm-legacy", "onetrust"].contains(s)), "{sources:?}");
    let from_crm = sources.iter().filter(|s| **s == "crm-legacy").count();
    assert_eq!(from_crm, 2, "one entry per source event after two runs: {history:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_killed_mid_run_resumes_to_the_state_of_one_clean_run() {
    let cluster = TestCluster::start_on_env_store(BIN, &["eu-central", "us-east"]).await.expect("cluster starts");
    let (_dir, receipts, args) = bulk_import(&cluster, "2");
    let mut child = std::process::Command::new(BIN).args(&args).spawn().unwrap();
    // Kill -9 once a part of the file has receipts.
    wait_for_receipts(&receipts, 2_000, &mut child);
    let _ = child.kill();
    let _ = child.wait();
    let partial = receipts_of(&receipts).len();
    assert!(partial < BULK_SUBJECTS * BULK_EVENTS, "the run finished before it could be killed ({partial} receipts)");
    // Rows of a window go out grouped by subject, out of file order: the checkpoint covers only
    // rows that all have their receipt (one row per line here), and ends a window.
    let mut name = receipts.clone().into_os_string();
    name.push(".checkpoint");
    let checkpoint = std::fs::read_to_string(&name).unwrap_or_default();
    let at: usize = checkpoint.lines().next().and_then(|l| l.parse().ok()).unwrap_or(0);
    let receipted: std::collections::HashSet<u64> =
        receipts_of(&receipts).iter().filter_map(|r| r["line"].as_u64()).collect();
    let missing = (1..=at as u64).filter(|line| !receipted.contains(line)).count();
    assert_eq!(missing, 0, "rows before the checkpoint ({at}) without a receipt");
    assert!(at.is_multiple_of(BULK_WINDOW), "a checkpoint inside a window: {checkpoint:?}");
    let (code, _, err) = domicile(&args);
    assert_eq!(code, 0, "{err}");
    // The re-run resumed: rows before the checkpoint were not sent again.
    let resumed: u64 = err
        .split(", ")
        .find_map(|part| {
            part.strip_suffix(" before the checkpoint in").or_else(|| {
                part.split(" before the checkpoint").next().filter(|_| part.contains("before the checkpoint"))
            })
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(resumed > 0, "the re-run did not resume from the checkpoint: {err}");
    assert_bulk_state(&cluster).await;
}

/// kill -9 of a region's node in the middle of an import, then started again: calls whose reply
/// was lost after the write are sent again and answered as duplicates, calls lost before their
/// commit are written when sent again; the importer rides it out with its retries (or stops
/// saying "re-run to resume", and the re-run finishes it). The end state is one clean run's, no
/// row is receipted as refused, and the killed region's audit chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_killed_mid_import_ends_in_the_state_of_one_clean_run() {
    let mut cluster = TestCluster::start_on_env_store(BIN, &["eu-central", "us-east"]).await.expect("cluster starts");
    let eu = domicile_cluster_tests::region("eu-central");
    let (_dir, receipts, args) = bulk_import(&cluster, "4");
    let mut child = std::process::Command::new(BIN).args(&args).stderr(std::process::Stdio::piped()).spawn().unwrap();
    wait_for_receipts(&receipts, 3_000, &mut child);
    assert!(child.try_wait().unwrap().is_none(), "the import ended before the node could be killed");
    let before = receipts_of(&receipts).len();
    cluster.cluster.kill_node(&eu).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.cluster.restart_node(&eu).await.unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        // It gave up before the region came back: what a re-run is for.
        assert!(stderr.contains("re-run to resume"), "{stderr}");
        let (code, _, err) = domicile(&args);
        assert_eq!(code, 0, "{err}");
    }
    let all = receipts_of(&receipts);
    assert!(before < BULK_SUBJECTS * BULK_EVENTS, "the node was killed mid-run ({before} receipts before)");
    let refused: Vec<_> = all.iter().filter(|r| r["status"] == "refused").take(3).collect();
    assert!(refused.is_empty(), "no row is refused because a node was killed: {refused:?}");
    let rows: std::collections::HashSet<String> = all.iter().map(|r| r["line"].to_string()).collect();
    assert_eq!(rows.len(), BULK_SUBJECTS * BULK_EVENTS, "a receipt for every row");
    assert_bulk_state(&cluster).await;
    let verified = domicile_cluster_tests::RegionAudit::of(&cluster, &eu).verify(BIN, false).unwrap();
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
}

/// Import calls that run past the deadline the gateway gives decisions are neither cut off nor
/// counted against the region: bulk calls go over connections with a deadline and a circuit
/// breaker of their own (`bulk_timeout_ms`). Here the gateway's node deadline is 300 ms and the
/// region's node is paused (SIGSTOP) for 800 ms under each of three import calls: every entry is
/// written once it resumes, and the region's next decision answers (on a shared channel each call
/// failed at 300 ms, and three such failures opened the circuit decisions go through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_calls_slower_than_the_decision_deadline_neither_fail_nor_open_the_regions_circuit() {
    let mut cluster = TestCluster::start_on_env_store(BIN, &["eu-central", "us-east"]).await.expect("cluster starts");
    let eu = domicile_cluster_tests::region("eu-central");
    let mut client = cluster.gateway().await.unwrap();
    let mut subjects = Vec::new();
    for n in 0..10 {
        let request = gw::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: vec![identifier("email", &format!("slow-import-{n}@example.com"))],
            ..Default::default()
        };
        subjects.push(client.register(request).await.unwrap().into_inner().subject_ref);
    }
    let deadline = Duration::from_millis(300);
    let path = cluster.dir().join("config/gateway.toml");
    let mut config: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    config.insert("node_timeout_ms".into(), toml::Value::Integer(deadline.as_millis() as i64));
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    cluster.restart_gateway().await.unwrap();
    let client = cluster.gateway().await.unwrap();
    let now = domicile_runtime::process::now_unix();
    for call in 0..3u64 {
        let items: Vec<_> = (0..200u64)
            .map(|n| {
                let subject = &subjects[(n % 10) as usize];
                let captured = now - 86_400 - (call * 200 + n) as i64;
                item(n, subject, common::ConsentAction::Grant, captured, &format!("slow-{call}-{n}"))
            })
            .collect();
        let paused = domicile_cluster_tests::Paused::node(&cluster, &eu).unwrap();
        let started = std::time::Instant::now();
        let mut importer = client.clone();
        let call_task = tokio::spawn(async move { importer.import_consent(request(items)).await });
        tokio::time::sleep(Duration::from_millis(800)).await;
        drop(paused);
        let outcomes = call_task.await.unwrap().expect("the import call answers").into_inner().outcomes;
        assert!(started.elapsed() > deadline, "the call outlived the node deadline");
        let refused: Vec<_> = outcomes.iter().filter(|o| !accepted(&o.result)).take(3).collect();
        assert!(refused.is_empty(), "call {call}: every entry is written: {refused:?}");
    }
    let mut client = client;
    let decision = client
        .decide(gw::DecideRequest {
            subject: select_ref(&subjects[0]),
            purpose: "marketing".into(),
            channel: "email".into(),
            ..Default::default()
        })
        .await
        .expect("the region's decisions still answer")
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(decision.effect, common::Effect::Allow as i32, "the imported grants are in force");
}

/// Subjects of [`bulk_file`], and events per subject.
const BULK_SUBJECTS: usize = 600;
const BULK_EVENTS: usize = 10;
/// Rows read ahead and grouped by subject in [`bulk_import`] (4 batches of 200).
const BULK_WINDOW: usize = 800;

/// 6,000 events for 600 subjects of two regions (DE, US): nine grants each, then a withdrawal,
/// spread over the file as an export sorted by time would.
fn bulk_file(path: &std::path::Path) {
    let mut text = String::new();
    for n in 0..BULK_SUBJECTS * BULK_EVENTS {
        let subject = n % BULK_SUBJECTS;
        let jurisdiction = if subject.is_multiple_of(2) { "DE" } else { "US" };
        let action = if n / BULK_SUBJECTS == BULK_EVENTS - 1 { "withdraw" } else { "grant" };
        let day = 1 + n / BULK_SUBJECTS;
        text.push_str(&format!(
            "{{\"source_system\":\"bulk\",\"source_event_id\":\"e{n}\",\"identifiers\":[{{\"kind\":\"email\",\"value\":\"bulk{subject}@example.com\"}}],\"jurisdiction\":\"{jurisdiction}\",\"purpose\":\"marketing\",\"channels\":[\"email\"],\"action\":\"{action}\",\"captured_at\":\"2026-01-{day:02}T10:00:00Z\"}}\n"
        ));
    }
    std::fs::write(path, text).unwrap();
}

/// A certificate for an importer of eu-central (capture and context scopes).
fn importer_tls(cluster: &TestCluster) -> domicile_runtime::tls::TlsFiles {
    cluster
        .issue_caller(
            "importer",
            "eu-central",
            &[domicile_runtime::identity::Scope::Capture, domicile_runtime::identity::Scope::Context],
        )
        .unwrap()
}

/// An importer's certificate, [`bulk_file`] and the `domicile import` arguments that import it in
/// batches of 200 with `in_flight` calls at once, each subject's rows grouped over windows of
/// [`BULK_WINDOW`] rows (`--group 4`): (the directory holding them, the receipts file, the
/// arguments).
fn bulk_import(cluster: &TestCluster, in_flight: &str) -> (tempfile::TempDir, std::path::PathBuf, Vec<String>) {
    let tls = importer_tls(cluster);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.ndjson");
    bulk_file(&file);
    let receipts = dir.path().join("receipts.ndjson");
    let args = import_args(
        cluster,
        &tls,
        "ndjson",
        &file,
        &receipts,
        &["--batch", "200", "--in-flight", in_flight, "--group", "4"],
    );
    (dir, receipts, args)
}

/// Waits until `receipts` holds `rows` receipts (or the run ended).
fn wait_for_receipts(receipts: &std::path::Path, rows: usize, child: &mut std::process::Child) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while receipts_of(receipts).len() < rows {
        assert!(std::time::Instant::now() < deadline, "the import made no progress");
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The state of one clean run of [`bulk_file`]: every event in its subject's ledger exactly once,
/// and the last (a withdrawal) in force. Each history is read as a caller of the subject's home
/// region (the ledger is personal data), over one connection per region, eight subjects at a
/// time: a certificate issued and two connections opened per subject made this check most of
/// these tests' time.
async fn assert_bulk_state(cluster: &TestCluster) {
    const AT_ONCE: usize = 8;
    let client = cluster.gateway().await.unwrap();
    let mut readers = std::collections::BTreeMap::new();
    for home in cluster.regions() {
        readers.insert(home.to_string(), cluster.home_reader(home.as_str()).await.unwrap());
    }
    let mut checks = tokio::task::JoinSet::new();
    for first in 0..AT_ONCE {
        let (mut client, mut readers) = (client.clone(), readers.clone());
        checks.spawn(async move {
            for subject in (first..BULK_SUBJECTS).step_by(AT_ONCE) {
                let selector = domicile_cluster_tests::select_email(&format!("bulk{subject}@example.com"));
                let resolve =
                    gw::ResolveRequest { identifier: Some(identifier("email", &format!("bulk{subject}@example.com"))) };
                let home = client.resolve(resolve).await.unwrap().into_inner().home_region;
                let reader = readers.get_mut(&home).unwrap_or_else(|| panic!("subject {subject}: home {home}"));
                let history = gw::ConsentHistoryRequest { subject: selector.clone(), purpose: String::new() };
                let entries = reader.consent_history(history).await.unwrap().into_inner().entries;
                assert_eq!(entries.len(), BULK_EVENTS, "subject {subject}: {} entries", entries.len());
                let decide = gw::DecideRequest {
                    subject: selector,
                    purpose: "marketing".into(),
                    channel: "email".into(),
                    ..Default::default()
                };
                let d = client.decide(decide).await.unwrap().into_inner().decision.unwrap();
                assert_eq!(d.effect, common::Effect::Deny as i32, "subject {subject}: the withdrawal is in force");
            }
        });
    }
    while let Some(done) = checks.join_next().await {
        done.unwrap();
    }
}

/// An erasure made while an import runs is not undone by it: a later row of the erased person,
/// sent by the subject ref the run cached when it registered them, is refused (the subject is
/// gone), never registered again. The file is a pipe, so the erasure falls between the rows.
/// An import reading one row at a time from a pipe (`--batch 1 --in-flight 1 --group 1`), so a
/// test can act on the cluster between two rows.
struct FifoImport {
    child: std::process::Child,
    pipe: Option<std::fs::File>,
    receipts: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl FifoImport {
    fn start(cluster: &TestCluster, tls: &domicile_runtime::tls::TlsFiles) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("rows.ndjson");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success(), "mkfifo");
        let receipts = dir.path().join("receipts.ndjson");
        let args = import_args(
            cluster,
            tls,
            "ndjson",
            &fifo,
            &receipts,
            &["--batch", "1", "--in-flight", "1", "--group", "1"],
        );
        let child = std::process::Command::new(BIN).args(&args).stderr(std::process::Stdio::piped()).spawn().unwrap();
        // Opening the pipe waits for the importer to open it.
        let pipe = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        Self { child, pipe: Some(pipe), receipts, _dir: dir }
    }

    /// Sends `rows` and waits until `receipts` rows have their receipt.
    fn send(&mut self, rows: &[String], receipts: usize) {
        use std::io::Write as _;
        let pipe = self.pipe.as_mut().expect("the pipe is open");
        pipe.write_all(rows.concat().as_bytes()).unwrap();
        pipe.flush().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while receipts_of(&self.receipts).len() < receipts {
            assert!(std::time::Instant::now() < deadline, "row {receipts} got no receipt");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends the last rows, closes the pipe and returns every receipt and the importer's stderr
    /// once it ended.
    fn finish(mut self, rows: &[String]) -> (Vec<serde_json::Value>, String) {
        use std::io::Write as _;
        let mut pipe = self.pipe.take().expect("the pipe is open");
        pipe.write_all(rows.concat().as_bytes()).unwrap();
        drop(pipe);
        let output = self.child.wait_with_output().unwrap();
        (receipts_of(&self.receipts), String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_during_an_import_is_not_undone_by_it() {
    let cluster = TestCluster::start_on_env_store(BIN, &["eu-central"]).await.expect("cluster starts");
    let tls = importer_tls(&cluster);
    let mut client = cluster.gateway().await.unwrap();
    // One person the import registers (its rows then go by the ref it cached), one registered
    // before the run (its rows go by identifier, never cached).
    let (fresh, known) = ("erased.midrun@example.com", "known.midrun@example.com");
    client
        .register(gw::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: vec![identifier("email", known)],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut import = FifoImport::start(&cluster, &tls);
    let row_in = |n: usize, email: &str, jurisdiction: &str| {
        format!(
            "{{\"source_system\":\"crm\",\"source_event_id\":\"erase-{n}\",\"identifiers\":[{{\"kind\":\"email\",\"value\":\"{email}\"}}],\"jurisdiction\":\"{jurisdiction}\",\"purpose\":\"marketing\",\"channels\":[\"email\"],\"action\":\"grant\",\"captured_at\":\"2026-01-0{n}T10:00:00Z\"}}\n"
        )
    };
    let row = |n: usize, email: &str| row_in(n, email, "DE");
    import.send(&[row(1, fresh), row(2, known)], 2);
    let first = receipts_of(&import.receipts);
    assert!(first.iter().all(|r| r["status"] == "accepted"), "{first:?}");

    // Both are erased between the rows; each has three more rows after it, the first of them
    // under another jurisdiction (a source that records each event's own geography): the run
    // still knows them as found before, not as new people.
    for email in [fresh, known] {
        client
            .erase(gw::EraseRequest {
                subject: domicile_cluster_tests::select_email(email),
                override_reason: "controller_correction".into(),
                ..Default::default()
            })
            .await
            .expect("erased");
    }
    let (all, stderr) = import.finish(&[
        row_in(3, fresh, "FR"),
        row_in(4, known, "FR"),
        row(5, fresh),
        row(6, known),
        row(7, fresh),
        row(8, known),
    ]);
    assert_eq!(all.len(), 8, "{all:?} {stderr}");
    for later in &all[2..] {
        assert_eq!(later["status"], "refused", "an erased person's later row: {all:?}");
    }
    for email in [fresh, known] {
        let found = client.resolve(gw::ResolveRequest { identifier: Some(identifier("email", email)) }).await;
        assert_eq!(found.map(|_| ()).unwrap_err().code(), Code::NotFound, "the import registered {email} again");
    }
}

/// A merge during an import: rows for the merged-away person (two identifiers each, so
/// registered first and then sent by the subject ref the importer cached) go to the subject the
/// merge made, not refused and skipped for good, with a certificate of the `capture` scope only
/// (no `context`, so no Resolve: sent by their first identifier); the withdrawal among them holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_during_an_import_loses_none_of_its_rows() {
    let cluster = TestCluster::start_on_env_store(BIN, &["eu-central"]).await.expect("cluster starts");
    // What an import needs and no more: `capture` (no `context`, so no Resolve).
    let tls =
        cluster.issue_caller("capture-only", "eu-central", &[domicile_runtime::identity::Scope::Capture]).unwrap();
    let mut client = cluster.gateway().await.unwrap();
    let kept = client
        .register(gw::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: vec![identifier("email", "kept.midrun@example.com")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .subject_ref;
    let mut import = FifoImport::start(&cluster, &tls);
    let row = |n: usize, action: &str| {
        format!(
            "{{\"source_system\":\"crm\",\"source_event_id\":\"merge-{n}\",\"identifiers\":[{{\"kind\":\"email\",\"value\":\"merged.midrun@example.com\"}},{{\"kind\":\"phone\",\"value\":\"+4915199988877\"}}],\"jurisdiction\":\"DE\",\"purpose\":\"marketing\",\"channels\":[\"email\"],\"action\":\"{action}\",\"captured_at\":\"2026-01-0{n}T10:00:00Z\"}}\n"
        )
    };
    // Registered by the first row, then sent by the ref the importer cached.
    import.send(&[row(1, "grant")], 1);
    import.send(&[row(2, "grant")], 2);
    let first = receipts_of(&import.receipts);
    assert!(first.iter().all(|r| r["status"] == "accepted"), "{first:?}");

    // Merged into another subject between two rows: the cached ref names nobody now.
    let email = || domicile_cluster_tests::select_email("merged.midrun@example.com");
    client
        .merge(gw::MergeRequest { into: select_ref(&kept), from: email(), idempotency_key: String::new() })
        .await
        .expect("merged");
    let (all, stderr) = import.finish(&[row(3, "withdraw")]);
    assert_eq!(all.len(), 3, "{all:?} {stderr}");
    assert_eq!(all[2]["status"], "accepted", "the withdrawal after the merge: {all:?}");
    let decision = client
        .decide(gw::DecideRequest {
            subject: email(),
            purpose: "marketing".into(),
            channel: "email".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(decision.effect, common::Effect::Deny as i32, "the imported withdrawal holds: {}", decision.explanation);
    let history = cluster.history_at_home(select_ref(&kept)).await.unwrap();
    assert_eq!(history.entries.len(), 3, "every row in the merged subject's ledger");
}

/// The checkpoint next to the receipts is bound to the rows it covers: importing another file
/// (or the same under another mapping) with the same receipts is refused, naming the checkpoint,
/// rather than silently skipping as many of its first rows; the same file resumes as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_resumes_only_the_file_it_was_written_for() {
    let cluster = TestCluster::start(BIN, &["eu-central"]).await.expect("cluster starts");
    let tls = importer_tls(&cluster);
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, prefix: &str| {
        let path = dir.path().join(name);
        let rows: String = (1..=3)
            .map(|n| {
                format!(
                    "{{\"source_system\":\"crm\",\"source_event_id\":\"{prefix}-{n}\",\"identifiers\":[{{\"kind\":\"email\",\"value\":\"{prefix}.{n}@example.com\"}}],\"jurisdiction\":\"DE\",\"purpose\":\"marketing\",\"channels\":[\"email\"],\"action\":\"grant\",\"captured_at\":\"2026-01-0{n}T10:00:00Z\"}}\n"
                )
            })
            .collect();
        std::fs::write(&path, rows).unwrap();
        path
    };
    let (first, second) = (file("first.ndjson", "first"), file("second.ndjson", "second"));
    let receipts = dir.path().join("receipts.ndjson");
    let (code, _, err) = domicile(&import_args(&cluster, &tls, "ndjson", &first, &receipts, &[]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(count(&receipts_of(&receipts), "accepted"), 3);

    // The same file again: every row before the checkpoint, nothing sent.
    let (code, _, err) = domicile(&import_args(&cluster, &tls, "ndjson", &first, &receipts, &[]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("3 before the checkpoint"), "{err}");
    // Another file with the same receipts: refused, nothing skipped or written.
    let (code, _, err) = domicile(&import_args(&cluster, &tls, "ndjson", &second, &receipts, &[]));
    assert_ne!(code, 0);
    assert!(err.contains("checkpoint") && err.contains("another --receipts"), "{err}");
    assert_eq!(receipts_of(&receipts).len(), 3, "no receipt for the other file");
    let mut client = cluster.gateway().await.unwrap();
    let found =
        client.resolve(gw::ResolveRequest { identifier: Some(identifier("email", "second.1@example.com")) }).await;
    assert_eq!(found.map(|_| ()).unwrap_err().code(), Code::NotFound, "nothing of the other file was imported");
    // With receipts of its own it imports every row.
    let (code, _, err) =
        domicile(&import_args(&cluster, &tls, "ndjson", &second, &dir.path().join("second.receipts"), &[]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(count(&receipts_of(&dir.path().join("second.receipts")), "accepted"), 3);
}

/// New subjects are registered in `RegisterBatch` calls: a row the batch cannot carry (more
/// identifiers than a registration takes) or a subject another region holds is refused alone,
/// with its reason and never its values, and every other new subject of the file is registered
/// and imported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_refused_at_registration_is_refused_alone() {
    let cluster =
        TestCluster::start_on_env_store(BIN, &["eu-central", "us-east", "ap-northeast"]).await.expect("cluster starts");
    let tls = importer_tls(&cluster);
    let mut gateway = cluster.gateway().await.unwrap();
    gateway
        .register(gw::RegisterRequest {
            jurisdiction: "US".into(),
            identifiers: vec![identifier("email", "lives.in.us@example.org")],
            ..Default::default()
        })
        .await
        .unwrap();
    let row = |n: usize, jurisdiction: &str, identifiers: &[String]| {
        let identifiers: Vec<String> =
            identifiers.iter().map(|v| format!(r#"{{"kind":"email","value":"{v}"}}"#)).collect();
        format!(
            r#"{{"source_system":"batch-test","source_event_id":"e{n}","identifiers":[{}],"jurisdiction":"{jurisdiction}","purpose":"marketing","channels":["email"],"action":"grant","captured_at":"2025-03-01T10:00:00Z"}}"#,
            identifiers.join(",")
        )
    };
    let mut lines: Vec<String> = (0..40).map(|n| row(n, "DE", &[format!("new.{n}@example.org")])).collect();
    let many: Vec<String> = (0..33).map(|n| format!("many.{n}@example.org")).collect();
    lines.insert(10, row(100, "DE", &many));
    // (A row naming only a known identifier is written to its subject wherever it lives; one that
    // brings a new identifier beside it registers them together, which that region refuses.)
    lines.insert(20, row(101, "DE", &["joins.us@example.org".to_owned(), "lives.in.us@example.org".to_owned()]));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rows.ndjson");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let receipts = dir.path().join("receipts.ndjson");
    let (code, _, err) = domicile(&import_args(&cluster, &tls, "ndjson", &file, &receipts, &[]));
    assert_eq!(code, 1, "rows refused: exit 1: {err}");
    let all = receipts_of(&receipts);
    assert_eq!(all.len(), 42, "{all:?}");
    assert_eq!(count(&all, "accepted"), 40, "{all:?}");
    let refused: std::collections::BTreeMap<u64, String> = all
        .iter()
        .filter(|r| r["status"] == "refused")
        .map(|r| (r["line"].as_u64().unwrap(), r["reason"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(refused.keys().copied().collect::<Vec<_>>(), [11, 21], "{refused:?}");
    assert!(refused[&11].contains("identifiers"), "{}", refused[&11]);
    assert!(refused[&21].contains("another region"), "{}", refused[&21]);
    for reason in refused.values() {
        assert!(!reason.contains("@example"), "a reason carries a value: {reason}");
    }
}
