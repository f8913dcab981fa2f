//! Nothing the user made is lost: a child `mriloop edit-script` process commits edits through
//! the journal and is killed with SIGKILL at several points; reopening the project recovers
//! every committed edit (at most the one in progress is missing). Also: the journal format
//! round-trips and a torn or corrupt journal is read up to its last good record; a save into a
//! read-only folder fails with a message naming the file and leaves the old files intact.

use mriloop::edit::{Edit, RecordField};
use mriloop::project::journal::{self, frame_record, parse_journal, JOURNAL_MAGIC};
use mriloop::project::store::{recover, CaseStore, SaveJob, StoreEvent};
use mriloop::project::{InputForm, Project};
use mriloop::session::script::scripted_step;
use mriloop::volume::Volume;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

fn phantom(dir: &Path) -> Project {
    let cfg = mriloop::phantom::PhantomConfig {
        cases: 1,
        seed: 3,
        form: InputForm::Volume3d,
        grid: 24,
        frames: 1,
        ..Default::default()
    };
    mriloop::phantom::generate_project(dir, &cfg, |_, _| {}).unwrap()
}

/// The mask and status after `n` scripted steps from the saved state.
fn expected_after(project: &Project, n: usize, seed: u64) -> (Volume<u8>, String) {
    let case = &project.manifest.cases[0];
    let mut mask = project.load_reference_mask(case).unwrap().unwrap();
    let mut status = case.review.as_str().to_string();
    for i in 0..n {
        if let Edit::Record { after, .. } = scripted_step(seed, i, &mut mask, &status) {
            status = after;
        }
    }
    (mask, status)
}

/// Run `mriloop ARGS --steps 1000 --seed SEED --pause-ms 2`, kill it with SIGKILL once it has
/// committed `kill_after` steps; returns the last step it said was committed (read to the end
/// of its output, so steps it committed while the kill was on its way count too).
fn kill_edit_script(args: &[String], seed: u64, kill_after: usize) -> usize {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mriloop"))
        .args(args)
        .args([
            "--steps",
            "1000",
            "--seed",
            &seed.to_string(),
            "--pause-ms",
            "2",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut last = 0;
    let mut killed = false;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let Ok(n) = line.trim_start_matches("committed ").parse::<usize>() else {
            break; // a line cut by the kill
        };
        last = n;
        if last >= kill_after && !killed {
            child.kill().unwrap();
            killed = true;
        }
    }
    let _ = child.wait();
    assert!(
        last >= kill_after,
        "the child committed {last} steps before it was killed"
    );
    last
}

#[test]
fn killing_an_editing_session_loses_at_most_the_edit_in_progress() {
    let seed = 42;
    for (kill_after, save_every) in [(3usize, 0usize), (11, 4), (26, 10)] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("p");
        let original = phantom(&root);
        let id = original.manifest.cases[0].id.clone();
        let script = vec![
            "edit-script".to_string(),
            root.to_str().unwrap().into(),
            "--case".into(),
            id.clone(),
            "--save-every".into(),
            save_every.to_string(),
        ];
        let last = kill_edit_script(&script, seed, kill_after);
        // Reopen as the app does: saved mask + journal replayed.
        let mut project = Project::open(&root).unwrap();
        let case = project.manifest.cases[0].clone();
        let mut mask = project.load_reference_mask(&case).unwrap().unwrap();
        let rec = recover(&mut project, 0, &mut mask).unwrap();
        // A kill mid-write may leave a torn last record, read up to it; any other problem
        // (a corrupt record in the middle) would lose edits.
        if let Some(problem) = &rec.problem {
            assert!(
                problem.contains("record ends early"),
                "journal problem after the kill: {problem}"
            );
        }
        let status = project.manifest.cases[0].review.as_str().to_string();
        let matches = |n: usize| {
            let (m, s) = expected_after(&original, n, seed);
            m == mask && s == status
        };
        assert!(
            matches(last) || matches(last + 1),
            "kill after {kill_after} (saves every {save_every}): the recovered state is neither \
             step {last} nor {}",
            last + 1
        );
    }
}

#[test]
fn journal_records_round_trip_and_a_torn_tail_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("p");
    let p = phantom(&root);
    let mut mask = p
        .load_reference_mask(&p.manifest.cases[0])
        .unwrap()
        .unwrap();
    let edits: Vec<Edit> = (0..6)
        .map(|i| scripted_step(5, i, &mut mask, "unreviewed"))
        .chain([Edit::Record {
            field: RecordField::Note,
            before: String::new(),
            after: "check the left habenula — ünïcode".into(),
        }])
        .collect();
    let mut bytes = JOURNAL_MAGIC.to_vec();
    for e in &edits {
        bytes.extend(frame_record(e));
    }
    let all = parse_journal(&bytes);
    assert_eq!(all.edits, edits);
    assert!(all.stopped.is_none());
    // A crash mid-write leaves a torn last record: the others are still read.
    let torn = parse_journal(&bytes[..bytes.len() - 3]);
    assert_eq!(torn.edits, edits[..edits.len() - 1]);
    assert!(torn.stopped.is_some());
    // A flipped byte fails the checksum of its record; earlier records stand.
    let mut flipped = bytes.clone();
    let second = JOURNAL_MAGIC.len() + frame_record(&edits[0]).len() + 10;
    flipped[second] ^= 0x40;
    assert_eq!(parse_journal(&flipped).edits, edits[..1]);
    // A record claiming billions of runs is refused before allocation.
    let mut huge = JOURNAL_MAGIC.to_vec();
    let payload = [
        1u8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        255, 255, 255, 255,
    ];
    let mut crc = flate2::Crc::new();
    crc.update(&payload);
    huge.extend((payload.len() as u32).to_le_bytes());
    huge.extend(crc.sum().to_le_bytes());
    huge.extend(payload);
    let h = parse_journal(&huge);
    assert!(h.edits.is_empty() && h.stopped.is_some());
    assert!(parse_journal(b"not a journal")
        .stopped
        .unwrap()
        .contains("magic"));
}

#[test]
fn saving_empties_the_journal_and_a_failed_save_keeps_the_old_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("p");
    let mut p = phantom(&root);
    let case = p.manifest.cases[0].clone();
    let mask_path = p.resolve(case.reference_mask.as_deref().unwrap());
    let mut mask = p.load_reference_mask(&case).unwrap().unwrap();
    let jpath = journal::journal_path(&p, &case.id);
    let store = CaseStore::open(&jpath);
    let e = scripted_step(9, 0, &mut mask, "unreviewed");
    store.append_and_wait(&e);
    assert!(jpath.exists());
    p.manifest.cases[0].note = "saved".into();
    store.save_and_wait(SaveJob {
        project: Some(p.clone()),
        mask: Some((mask_path.clone(), mask.clone())),
        remove_after: Vec::new(),
        segment_names: Vec::new(),
    });
    assert_eq!(store.poll(), vec![StoreEvent::Saved]);
    assert!(!jpath.exists(), "the journal is emptied after a save");
    let reopened = Project::open(&root).unwrap();
    assert_eq!(reopened.manifest.cases[0].note, "saved");
    assert_eq!(
        reopened.load_reference_mask(&case).unwrap().unwrap().data(),
        mask.data()
    );
    // A save that cannot write (here: into /proc, read-only even for root) reports the file and
    // keeps the journal, so the edits are still recoverable.
    let e1 = scripted_step(9, 1, &mut mask, "unreviewed");
    store.append_and_wait(&e1);
    let nowhere = Path::new("/proc/mriloop-cannot-write/reference.nii.gz").to_path_buf();
    store.save_and_wait(SaveJob {
        project: Some(p.clone()),
        mask: Some((nowhere, mask.clone())),
        remove_after: Vec::new(),
        segment_names: Vec::new(),
    });
    let events = store.close();
    assert!(
        matches!(&events[..], [StoreEvent::Failed(m)] if m.contains("/proc/mriloop-cannot-write")),
        "{events:?}"
    );
    assert_eq!(journal::read_journal(&jpath).unwrap().edits, vec![e1]);

    // Read-only case folder (skipped when running as a user who can write anyway, e.g. root).
    let case_dir = mask_path.parent().unwrap().to_path_buf();
    let saved_bytes = std::fs::read(&mask_path).unwrap();
    let mut perms = std::fs::metadata(&case_dir).unwrap().permissions();
    use std::os::unix::fs::PermissionsExt;
    perms.set_mode(0o555);
    std::fs::set_permissions(&case_dir, perms.clone()).unwrap();
    let probe = case_dir.join(".probe");
    let enforced = std::fs::write(&probe, b"x").is_err();
    let _ = std::fs::remove_file(&probe);
    if enforced {
        let store = CaseStore::open(&jpath);
        let e2 = scripted_step(9, 1, &mut mask, "unreviewed");
        store.append_and_wait(&e2);
        store.save_and_wait(SaveJob {
            project: Some(p.clone()),
            mask: Some((mask_path.clone(), mask.clone())),
            remove_after: Vec::new(),
            segment_names: Vec::new(),
        });
        let events = store.close();
        let msg = events
            .iter()
            .find_map(|e| match e {
                StoreEvent::Failed(m) => Some(m.clone()),
                _ => None,
            })
            .expect("a failure is reported");
        assert!(msg.contains(&case.id), "names the file: {msg}");
        assert_eq!(
            std::fs::read(&mask_path).unwrap(),
            saved_bytes,
            "old mask intact"
        );
    }
    perms.set_mode(0o755);
    std::fs::set_permissions(&case_dir, perms).unwrap();
}

#[test]
fn killing_an_editing_session_on_loose_files_keeps_the_edits_and_the_users_files() {
    let seed = 7;
    let dir = tempfile::tempdir().unwrap();
    let original = phantom(&dir.path().join("src"));
    let case = &original.manifest.cases[0];
    let t1 = dir.path().join("T1.nii.gz");
    let labels = dir.path().join("labels.nii.gz");
    std::fs::copy(original.resolve(&case.sequences[0].path), &t1).unwrap();
    std::fs::copy(
        original.resolve(case.reference_mask.as_deref().unwrap()),
        &labels,
    )
    .unwrap();
    let (t1_bytes, labels_bytes) = (std::fs::read(&t1).unwrap(), std::fs::read(&labels).unwrap());
    let loose_root = dir.path().join("unsaved");
    let script: Vec<String> = [
        "edit-script",
        "--files",
        t1.to_str().unwrap(),
        "--seg",
        labels.to_str().unwrap(),
        "--loose-root",
        loose_root.to_str().unwrap(),
        "--save-every",
        "4",
    ]
    .map(String::from)
    .to_vec();
    let last = kill_edit_script(&script, seed, 14);
    // The user's files are byte for byte as they were; the edits are in the working copy.
    assert_eq!(std::fs::read(&t1).unwrap(), t1_bytes);
    assert_eq!(std::fs::read(&labels).unwrap(), labels_bytes);
    let target = mriloop::session::script::ScriptTarget::Files {
        images: vec![t1.clone()],
        mask: Some(labels.clone()),
        loose_root,
    };
    let session = mriloop::session::script::open_session(&target).unwrap();
    let recovered = session.open_case().unwrap().reference.clone().unwrap();
    let matches = |n: usize| {
        let mut mask = original.load_reference_mask(case).unwrap().unwrap();
        for i in 0..n {
            scripted_step(seed, i, &mut mask, "");
        }
        mask == recovered
    };
    assert!(
        matches(last) || matches(last + 1),
        "the recovered mask is neither step {last} nor {}",
        last + 1
    );
    assert!(session.has_unsaved_loose_edits());
}
