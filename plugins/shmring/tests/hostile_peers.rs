// SPDX-License-Identifier: MPL-2.0
//! Hostile peers (issue 15): a ring header with geometry nobody can map, a ring truncated under
//! its reader and writer, another user's object planted at the name. Every attack runs from
//! another process; the attacked process must end with a clear error (exit status 1 for
//! gst-launch, 2 for the Python CLI), never be killed by a signal or abort, and a good peer must
//! work at the same name right after. Run `cargo build -p gst-plugin-shmring` first.

mod common;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};
use std::time::Duration;

use vcambridge_tests::ipc::{
    ShmName, gst_launch_args, last_json, shmring_cli, shmring_python, spawn_logged, wait_for_log,
};
use vcambridge_tests::{ChildGuard, python, run_with_timeout, wait_for};

const LONG: Duration = Duration::from_secs(60);

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The process ended by itself: not killed by SIGBUS/SIGABRT/....
fn assert_not_killed(what: &str, out: &Output) {
    assert_eq!(
        out.status.signal(),
        None,
        "{what} was killed by signal {:?}:\n{}",
        out.status.signal(),
        text(out)
    );
}

/// gst-launch-1.0 reported the error and exited by itself with a failure status (1 for an error
/// while playing, 255 when the pipeline cannot start): not killed by SIGBUS/SIGABRT/....
fn assert_gst_error(what: &str, out: &Output) {
    assert_not_killed(what, out);
    assert!(
        matches!(out.status.code(), Some(1 | 255)),
        "{what}: {:?}\n{}",
        out.status,
        text(out)
    );
}

/// The process ended by itself with exit status `code` (not killed by SIGBUS/SIGABRT/...).
fn assert_exit(what: &str, out: &Output, code: i32) {
    assert_not_killed(what, out);
    assert_eq!(out.status.code(), Some(code), "{what}:\n{}", text(out));
}

fn src_cmd(name: &str, timeout_ms: u32, buffers: u32) -> Command {
    gst_launch_args(&[
        "shmringsrc",
        &format!("shm-name={name}"),
        &format!("timeout={timeout_ms}"),
        &format!("num-buffers={buffers}"),
        "!",
        "fakesink",
    ])
}

/// shmringsrc (`timeout_ms`, at most `buffers` buffers) on the ring at `shm`: it must end with
/// an error of its own (`what` names the case); returns what it printed.
fn gst_read_fails(what: &str, shm: &ShmName, timeout_ms: u32, buffers: u32) -> String {
    let out = run_with_timeout("src", &mut src_cmd(&shm.name, timeout_ms, buffers), LONG);
    assert_gst_error(what, &out);
    text(&out)
}

/// `shmring.py read <name> <args>` on the ring at `shm`: it must exit by itself with `code`
/// (`what` names the case); returns its output.
fn python_read(what: &str, shm: &ShmName, args: &[&str], code: i32) -> Output {
    let mut argv = vec!["read", shm.name.as_str()];
    argv.extend_from_slice(args);
    let out = run_with_timeout("python read", &mut shmring_cli(&argv), LONG);
    assert_exit(what, &out, code);
    out
}

/// A Python writer that publishes `frames` frames of 64 bytes (every 10 ms), then EOS.
fn python_writer(name: &str, frames: u32) -> ChildGuard {
    let mut cmd = shmring_python(&format!(
        "import shmring, sys, time\nw = shmring.Writer(sys.argv[1], caps='application/x-test', slots=4, slot_size=64)\nfor i in range({frames}):\n    w.write(bytes([i % 256]) * 64, pts=i * 10_000_000)\n    time.sleep(0.01)\nw.eos()\nw.close()\n"
    ));
    cmd.arg(name);
    ChildGuard::spawn("python writer", &mut cmd)
}

/// A good writer and readers work at `name` (right after an attack there).
fn good_peers_work(shm: &ShmName) {
    shm.remove();
    let writer = python_writer(&shm.name, 300);
    let out = run_with_timeout("good src", &mut src_cmd(&shm.name, 10_000, 5), LONG);
    assert_exit("shmringsrc after the attack", &out, 0);
    let out = python_read(
        "python reader after the attack",
        shm,
        &["--max", "5", "--timeout", "10"],
        0,
    );
    let summary = last_json(&out.stdout);
    assert_eq!(summary["frames"], 5, "{summary}");
    drop(writer);
}

/// Make a ring with the Python writer and leave it behind (writer exited, name kept).
fn leave_ring(shm: &ShmName) {
    let mut cmd = shmring_python(
        "import shmring, sys\nw = shmring.Writer(sys.argv[1], caps='x/y', slots=4, slot_size=64)\nw.write(b'abc')\nw.close(unlink=False)\n",
    );
    cmd.arg(&shm.name);
    let out = run_with_timeout("python writer", &mut cmd, LONG);
    assert!(out.status.success(), "{}", text(&out));
}

/// Patch the geometry fields of the ring at `shm` (slot count, slot size, stride, total) and set
/// the object's size: what a hostile writer can do.
fn patch_geometry(shm: &ShmName, slots: u32, slot_size: u64, stride: u64, total: u64, len: u64) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(shm.path())
        .expect("open ring");
    f.write_all_at(&slots.to_le_bytes(), 16).expect("patch");
    f.write_all_at(&slot_size.to_le_bytes(), 24).expect("patch");
    f.write_all_at(&stride.to_le_bytes(), 32).expect("patch");
    f.write_all_at(&total.to_le_bytes(), 40).expect("patch");
    // state live, as a running writer would leave it
    f.write_all_at(&1u32.to_le_bytes(), 52).expect("patch");
    f.set_len(len).expect("size");
}

#[test]
fn geometry_that_cannot_be_mapped_is_refused() {
    vcambridge_tests::assert_plugin_built("shmring");
    let shm = ShmName::new("hostile-geometry");
    let path = shm.path().display().to_string();
    // Slot size 2^64 - 64: the stride (64 + slot size) wraps to 0, the total to 4096.
    leave_ring(&shm);
    patch_geometry(&shm, 4, u64::MAX - 63, 0, 4096, 4096 + 4 * 128);
    let t = gst_read_fails("shmringsrc on a wrapping header", &shm, 1000, 1);
    assert!(
        t.contains(&path)
            && t.contains("inconsistent ring header")
            && t.contains("slot size 18446744073709551552"),
        "{t}"
    );
    let out = python_read(
        "python reader on a wrapping header",
        &shm,
        &["--timeout", "1"],
        2,
    );
    assert!(
        text(&out).contains("inconsistent ring header"),
        "{}",
        text(&out)
    );

    // A consistent but sparse 2 TiB ring (two 1 TiB slots): refused before anything is mapped
    // or allocated (it used to make GLib abort on a 1 TiB allocation).
    let tib = 1u64 << 40;
    let total = 4096 + 2 * (tib + 64);
    leave_ring(&shm);
    patch_geometry(&shm, 2, tib, tib + 64, total, total);
    // Frame 0 (slot 0 at 4096) claims a 1 TiB payload: what made the old readers allocate it.
    std::fs::OpenOptions::new()
        .write(true)
        .open(shm.path())
        .expect("open ring")
        .write_all_at(&tib.to_le_bytes(), 4096 + 40)
        .expect("patch frame size");
    assert_eq!(std::fs::metadata(shm.path()).expect("stat").len(), total);
    let t = gst_read_fails("shmringsrc on a 2 TiB ring", &shm, 1000, 1);
    assert!(
        t.contains("inconsistent ring header") && t.contains("up to 4294967296"),
        "{t}"
    );
    let out = python_read(
        "python reader on a 2 TiB ring",
        &shm,
        &["--timeout", "1"],
        2,
    );
    let t = text(&out);
    assert!(
        t.contains("shmring: ") && t.contains("inconsistent ring header"),
        "{t}"
    );
    assert!(
        !t.contains("MemoryError") && !t.contains("Traceback"),
        "{t}"
    );

    // A header that claims more slots than the object holds.
    leave_ring(&shm);
    patch_geometry(
        &shm,
        4,
        1 << 20,
        (1 << 20) + 64,
        4096 + 4 * ((1 << 20) + 64),
        8192,
    );
    let t = gst_read_fails("shmringsrc on a short object", &shm, 1000, 1);
    assert!(t.contains("segment is 8192 bytes, a ring needs at least"));

    good_peers_work(&shm);
}

/// A live ring that names writer pid 0 (no process; `kill(0, 0)` would probe our own process
/// group) is never reported as "still running".
#[test]
fn writer_pid_zero_is_not_a_running_writer() {
    vcambridge_tests::assert_plugin_built("shmring");
    let shm = ShmName::new("hostile-pid0");
    leave_ring(&shm);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(shm.path())
        .expect("open ring");
    f.write_all_at(&0u32.to_le_bytes(), 48).expect("pid 0");
    f.write_all_at(&1u32.to_le_bytes(), 52).expect("state live");
    drop(f);
    let t = gst_read_fails("shmringsrc on a pid 0 ring", &shm, 500, 5);
    assert!(t.contains("names no writer process (pid 0)"), "{t}");
    assert!(!t.contains("still running"), "{t}");
    let out = python_read(
        "python reader on a pid 0 ring",
        &shm,
        &["--max", "5", "--timeout", "0.5"],
        0,
    );
    let summary = last_json(&out.stdout);
    assert_eq!(
        (
            summary["frames"].as_u64(),
            summary["writer_alive"].as_bool()
        ),
        (Some(1), Some(false)),
        "{summary}"
    );
    good_peers_work(&shm);
}

/// Another process truncates a live ring: the reader (shmringsrc) and the writer (shmringsink,
/// writing in place through its slot pool) both end with an error naming the shrink instead of
/// dying of SIGBUS.
#[test]
fn truncated_ring_kills_neither_reader_nor_writer() {
    vcambridge_tests::assert_plugin_built("shmring");
    let shm = ShmName::new("hostile-shrink");
    let dir = tempfile::tempdir().expect("tempdir");
    let wlog = dir.path().join("writer.log");
    let rlog = dir.path().join("reader.log");
    let mut writer = spawn_logged(
        "writer",
        &mut gst_launch_args(&[
            "videotestsrc",
            "is-live=true",
            "pattern=ball",
            "!",
            "video/x-raw,format=BGRx,width=320,height=240,framerate=100/1",
            "!",
            "shmringsink",
            &format!("shm-name={}", shm.name),
        ]),
        &wlog,
    );
    wait_for(LONG, "the writer's ring", || {
        let md = std::fs::metadata(shm.path()).ok()?;
        (md.len() > 4096).then_some(())
    });
    let mut reader = spawn_logged(
        "reader",
        &mut gst_launch_args(&[
            "-v",
            "shmringsrc",
            &format!("shm-name={}", shm.name),
            "timeout=10000",
            "!",
            "fakesink",
            "silent=false",
        ]),
        &rlog,
    );
    wait_for_log(&rlog, "chain", LONG);
    // The attack: shrink the object to its header.
    common::truncate_ring(&shm, 4096);
    let rstatus = wait_for(LONG, "the reader to stop", || reader.try_status());
    let wstatus = wait_for(LONG, "the writer to stop", || writer.try_status());
    let rtext = std::fs::read_to_string(&rlog).unwrap_or_default();
    let wtext = std::fs::read_to_string(&wlog).unwrap_or_default();
    let tail = |t: &str| t.lines().rev().take(15).collect::<Vec<_>>().join("\n");
    assert_eq!(rstatus.signal(), None, "reader killed:\n{}", tail(&rtext));
    assert_eq!(rstatus.code(), Some(1), "reader:\n{}", tail(&rtext));
    assert!(
        rtext.contains("shrank to 4096 bytes while mapped")
            && rtext.contains("another process truncated the ring"),
        "reader:\n{}",
        tail(&rtext)
    );
    assert_eq!(wstatus.signal(), None, "writer killed:\n{}", tail(&wtext));
    assert_eq!(wstatus.code(), Some(1), "writer:\n{}", tail(&wtext));
    assert!(
        wtext.contains("shrank to 4096 bytes while mapped"),
        "writer:\n{}",
        tail(&wtext)
    );
    good_peers_work(&shm);
}

/// Another user (nobody) creates the name first and keeps a read-write fd: shmringsink and the
/// Python writer refuse it, naming the owner, and nobody's fd never sees a frame.
#[test]
fn object_of_another_user_is_not_adopted() {
    vcambridge_tests::assert_plugin_built("shmring");
    let is_root = unsafe { libc::geteuid() } == 0;
    if !is_root || !vcambridge_tests::have_program("setpriv") {
        eprintln!("SKIP: needs root and setpriv to create the object as another user");
        return;
    }
    let shm = ShmName::new("hostile-owner");
    let path = shm.path().display().to_string();
    let go = std::env::temp_dir().join(format!("vcb-hostile-owner-go-{}", std::process::id()));
    let _ = std::fs::remove_file(&go);
    let script = format!(
        "import os, json, time\nfd = os.open({path:?}, os.O_RDWR | os.O_CREAT, 0o666)\ndeadline = time.monotonic() + 30\nwhile not os.path.exists({go:?}) and time.monotonic() < deadline:\n    time.sleep(0.02)\nst = os.fstat(fd)\nprint(json.dumps({{'size': st.st_size, 'uid': st.st_uid, 'head': os.pread(fd, 64, 0).hex()}}))\n",
        go = go.display().to_string()
    );
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(python())
        .args(["-c", &script]);
    let nobody = ChildGuard::spawn("nobody holding the name", &mut cmd);
    wait_for(Duration::from_secs(10), "nobody's object", || {
        std::fs::metadata(shm.path())
            .ok()
            .filter(|m| m.uid() == 65534)
    });
    let out = run_with_timeout(
        "sink",
        &mut gst_launch_args(&[
            "videotestsrc",
            "num-buffers=30",
            "!",
            "video/x-raw,format=GRAY8,width=64,height=48",
            "!",
            "shmringsink",
            &format!("shm-name={}", shm.name),
            "async=false",
        ]),
        LONG,
    );
    assert_gst_error("shmringsink at another user's name", &out);
    let t = text(&out);
    assert!(
        t.contains(&format!("{path} already exists and is owned by uid 65534"))
            && t.contains(&format!("rm {path}"))
            && t.contains("pick another shm-name"),
        "{t}"
    );
    let mut cmd = shmring_python(
        "import shmring, sys\ntry:\n    shmring.Writer(sys.argv[1], slot_size=64)\nexcept shmring.RingError as e:\n    print('RingError:', e); sys.exit(3)\n",
    );
    cmd.arg(&shm.name);
    let out = run_with_timeout("python writer", &mut cmd, LONG);
    assert_exit("python writer at another user's name", &out, 3);
    assert!(text(&out).contains("owned by uid 65534"), "{}", text(&out));
    // Nobody's fd: still the empty object nobody made, no frame ever reached it.
    std::fs::write(&go, b"go").expect("go file");
    let out = nobody.wait_output(LONG);
    let _ = std::fs::remove_file(&go);
    assert!(out.status.success(), "{}", text(&out));
    let seen = last_json(&out.stdout);
    assert_eq!(seen["size"], 0, "{seen}");
    assert_eq!(seen["uid"], 65534, "{seen}");
    assert_eq!(seen["head"], "", "{seen}");
    good_peers_work(&shm);
}
