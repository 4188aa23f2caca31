// SPDX-License-Identifier: MPL-2.0
//! Errors a user can act on: bad names, wrong permissions, a foreign file at the shm name, a version
//! mismatch, a second writer, a missing writer: clear errors from shmringsink, shmringsrc and
//! the Python module. Run `cargo build -p gst-plugin-shmring` first.

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::process::Command;
use std::time::Duration;

use vcambridge_tests::ipc::{ShmName, gst_launch_args, shmring_python};
use vcambridge_tests::{ChildGuard, plugin_dir, python, run_with_timeout, wait_for};

const LONG: Duration = Duration::from_secs(60);

/// Run `cmd`, expect failure, return stdout + stderr.
fn run_fail(what: &str, cmd: &mut Command) -> String {
    let out = run_with_timeout(what, cmd, LONG);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{what} should fail:\n{text}");
    text
}

fn sink_cmd(name: &str) -> Command {
    gst_launch_args(&[
        "fakesrc",
        "num-buffers=1",
        "sizetype=fixed",
        "sizemax=64",
        "!",
        "shmringsink",
        &format!("shm-name={name}"),
    ])
}

fn src_cmd(name: &str, timeout_ms: u32) -> Command {
    gst_launch_args(&[
        "shmringsrc",
        &format!("shm-name={name}"),
        &format!("timeout={timeout_ms}"),
        "num-buffers=1",
        "!",
        "fakesink",
    ])
}

/// Python: run `code` with `name` bound; expect a RingError and return its message.
fn python_error(code: &str, name: &str) -> String {
    let script = format!(
        "import shmring, sys\nname = sys.argv[1]\ntry:\n    {code}\nexcept shmring.RingError as e:\n    print('RingError:', e)\n    sys.exit(3)\nprint('no error')\n"
    );
    let mut cmd = shmring_python(&script);
    cmd.arg(name);
    let out = run_with_timeout("python", &mut cmd, LONG);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(3),
        "python should raise RingError:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn bad_names_are_rejected_clearly() {
    vcambridge_tests::assert_plugin_built("shmring");
    let long = format!("/{}", "a".repeat(300));
    // `vcam0` is a valid name (taken as `/vcam0`, see ring_ipc); these could escape /dev/shm
    // or are not names at all.
    for (name, needle) in [
        ("/a/b", "may contain a '/' only at the start"),
        ("a/b", "may contain a '/' only at the start"),
        ("../x", "may contain a '/' only at the start"),
        ("", "needs a name"),
        ("..", "needs a name"),
        (long.as_str(), "at most 255"),
    ] {
        let e = python_error("shmring.Writer(name, slot_size=64)", name);
        assert!(
            e.contains("shm name") && e.contains(needle),
            "python {name}: {e}"
        );
        if name.is_empty() {
            // gst-launch-1.0 cannot pass an empty value; the element's check is unit-tested.
            continue;
        }
        let e = run_fail("sink", &mut sink_cmd(name));
        assert!(
            e.contains(needle) && e.contains("shm name"),
            "sink {name}: {e}"
        );
        let e = run_fail("src", &mut src_cmd(name, 100));
        assert!(e.contains(needle), "src {name}: {e}");
    }
}

#[test]
fn foreign_file_is_left_alone_with_clear_errors() {
    vcambridge_tests::assert_plugin_built("shmring");
    let shm = ShmName::new("foreign");
    let content = b"this is somebody else's data\n".repeat(400);
    std::fs::write(shm.path(), &content).expect("write foreign file");
    let path = shm.path().display().to_string();
    let e = run_fail("sink", &mut sink_cmd(&shm.name));
    assert!(
        e.contains(&path) && e.contains("is not a vcambridge shm ring"),
        "sink: {e}"
    );
    assert!(
        e.contains("pick another shm-name or remove the file"),
        "{e}"
    );
    let e = run_fail("src", &mut src_cmd(&shm.name, 1000));
    assert!(
        e.contains(&path) && e.contains("not a vcambridge shm ring"),
        "src: {e}"
    );
    let e = python_error("shmring.Reader(name, timeout=1)", &shm.name);
    assert!(e.contains("not a vcambridge shm ring"), "{e}");
    let e = python_error("shmring.Writer(name, slot_size=64)", &shm.name);
    assert!(e.contains("not a vcambridge shm ring"), "{e}");
    // Nobody touched the foreign file.
    assert_eq!(std::fs::read(shm.path()).expect("read back"), content);
    // A tiny foreign file too.
    std::fs::write(shm.path(), b"tiny").expect("write");
    let e = run_fail("src", &mut src_cmd(&shm.name, 1000));
    assert!(e.contains("not a vcambridge shm ring"), "src: {e}");
    assert_eq!(std::fs::read(shm.path()).expect("read back"), b"tiny");
}

/// Make a ring with the Python writer and leave it behind (writer exited, name kept).
fn leave_ring(shm: &ShmName) {
    let mut cmd = shmring_python(
        "import shmring, sys\nw = shmring.Writer(sys.argv[1], caps='x/y', slots=4, slot_size=64)\nw.write(b'abc')\nw.close(unlink=False)\n",
    );
    cmd.arg(&shm.name);
    let out = run_with_timeout("python writer", &mut cmd, LONG);
    assert!(out.status.success(), "{out:?}");
    assert!(shm.exists());
}

#[test]
fn version_mismatch_and_truncated_ring() {
    vcambridge_tests::assert_plugin_built("shmring");
    let shm = ShmName::new("version");
    leave_ring(&shm);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(shm.path())
        .expect("open ring");
    f.write_all_at(&2u32.to_le_bytes(), 8)
        .expect("patch version");
    drop(f);
    let e = run_fail("src", &mut src_cmd(&shm.name, 1000));
    assert!(
        e.contains("layout version 2") && e.contains("version 1"),
        "src: {e}"
    );
    let e = run_fail("sink", &mut sink_cmd(&shm.name));
    assert!(
        e.contains("layout version 2") && e.contains(&shm.path().display().to_string()),
        "sink: {e}"
    );
    let e = python_error("shmring.Reader(name, timeout=1)", &shm.name);
    assert!(e.contains("version 2"), "{e}");
    let e = python_error("shmring.Writer(name, slot_size=64)", &shm.name);
    assert!(e.contains("version 2"), "{e}");

    // A ring whose file is shorter than its header says.
    let shm = ShmName::new("short");
    leave_ring(&shm);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(shm.path())
        .expect("open ring");
    f.set_len(4096 + 64).expect("truncate");
    drop(f);
    let e = run_fail("src", &mut src_cmd(&shm.name, 1000));
    assert!(e.contains("a ring needs at least"), "src: {e}");
}

#[test]
fn second_writer_and_missing_writer() {
    vcambridge_tests::assert_plugin_built("shmring");
    let shm = ShmName::new("busy");
    let first = ChildGuard::spawn(
        "first writer",
        &mut gst_launch_args(&[
            "videotestsrc",
            "is-live=true",
            "!",
            "video/x-raw,width=64,height=48",
            "!",
            "shmringsink",
            &format!("shm-name={}", shm.name),
        ]),
    );
    wait_for(LONG, "the first writer's ring", || {
        shm.exists().then_some(())
    });
    let e = run_fail("second writer", &mut sink_cmd(&shm.name));
    assert!(
        e.contains(&format!("in use by another writer (pid {})", first.pid())),
        "{e}"
    );
    drop(first);
    // Two sinks of one process on the same ring.
    let name_arg = format!("shm-name={}", shm.name);
    let e = run_fail(
        "two sinks",
        &mut gst_launch_args(&[
            "videotestsrc",
            "num-buffers=5",
            "!",
            "tee",
            "name=t",
            "!",
            "queue",
            "!",
            "shmringsink",
            &name_arg,
            "t.",
            "!",
            "queue",
            "!",
            "shmringsink",
            &name_arg,
        ]),
    );
    assert!(e.contains("another shmringsink in this process"), "{e}");

    let none = ShmName::new("nowriter");
    let e = run_fail("src", &mut src_cmd(&none.name, 300));
    assert!(
        e.contains(&format!(
            "no writer appeared at {} within",
            none.path().display()
        )),
        "{e}"
    );
    let e = python_error("shmring.Reader(name, timeout=0.3)", &none.name);
    assert!(e.contains("no writer appeared"), "{e}");
}

/// The reader side runs as another user: with the default mode 0600 it is refused with a message
/// naming owner and mode; with `mode=0644` it reads. As non-root the object is made unreadable
/// for ourselves instead.
#[test]
fn wrong_permissions() {
    vcambridge_tests::assert_plugin_built("shmring");
    let shm = ShmName::new("perm");
    let is_root = unsafe { libc::geteuid() } == 0;
    let have_setpriv = Command::new("setpriv").arg("--version").output().is_ok();
    if is_root && !have_setpriv {
        panic!("running as root needs setpriv (util-linux) to test as another user");
    }
    let home = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    // Wrap a command so it runs as nobody (root) or as ourselves.
    let as_other = |program: &str, args: &[&str]| -> Command {
        let mut cmd = if is_root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(program);
            c
        } else {
            Command::new(program)
        };
        cmd.args(args)
            .env("HOME", home.path())
            .env("GST_REGISTRY", home.path().join("registry.bin"))
            .env("GST_PLUGIN_PATH", plugin_dir());
        cmd
    };
    let writer_for = |mode: &str| {
        let w = ChildGuard::spawn(
            "writer",
            &mut gst_launch_args(&[
                "videotestsrc",
                "is-live=true",
                "!",
                "video/x-raw,format=GRAY8,width=64,height=48",
                "!",
                "shmringsink",
                &format!("shm-name={}", shm.name),
                &format!("mode={mode}"),
            ]),
        );
        wait_for(LONG, "the ring", || {
            let md = std::fs::metadata(shm.path()).ok()?;
            (md.len() > 4096).then_some(())
        });
        w
    };
    let w = writer_for("384");
    let mode = std::fs::metadata(shm.path())
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "created 0600 by default");
    if !is_root {
        std::fs::set_permissions(shm.path(), std::fs::Permissions::from_mode(0o000))
            .expect("chmod");
    }
    let name_arg = format!("shm-name={}", shm.name);
    let e = run_fail(
        "src as another user",
        &mut as_other(
            "gst-launch-1.0",
            &["shmringsrc", &name_arg, "timeout=1000", "!", "fakesink"],
        ),
    );
    assert!(
        e.contains(&format!(
            "permission denied opening {} for reading",
            shm.path().display()
        )),
        "{e}"
    );
    assert!(e.contains("mode=0644"), "says what to do: {e}");
    let py = python().display().to_string();
    let script = format!(
        "import sys; sys.path.insert(0, {:?})\nimport shmring\ntry:\n    shmring.Reader({:?}, timeout=1)\nexcept shmring.RingError as e:\n    print('RingError:', e); sys.exit(3)\n",
        vcambridge_tests::ipc::shmring_python_dir()
            .display()
            .to_string(),
        shm.name
    );
    let out = run_with_timeout(
        "python as another user",
        &mut as_other(&py, &["-c", &script]),
        LONG,
    );
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("permission denied opening"), "{text}");
    drop(w);
    shm.remove();
    if is_root {
        // mode=0644 (420): the other user reads frames.
        let _w = writer_for("420");
        let out = run_with_timeout(
            "src as nobody, mode 0644",
            &mut as_other(
                "gst-launch-1.0",
                &[
                    "shmringsrc",
                    &name_arg,
                    "timeout=5000",
                    "num-buffers=3",
                    "!",
                    "fakesink",
                ],
            ),
            LONG,
        );
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The Python reader with read permission only: it cannot use the futex, it polls.
        let script = format!(
            "import sys, json; sys.path.insert(0, {:?})\nimport shmring\nr = shmring.Reader({:?}, timeout=5)\nn = sum(1 for _ in range(3) if r.read(timeout=5) is not None)\nprint(json.dumps({{'frames': n, 'futex': r.uses_futex}}))\n",
            vcambridge_tests::ipc::shmring_python_dir()
                .display()
                .to_string(),
            shm.name
        );
        let out = run_with_timeout(
            "python as nobody, mode 0644",
            &mut as_other(&py, &["-c", &script]),
            LONG,
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(r#"{"frames": 3, "futex": false}"#), "{text}");
    }
}

#[test]
fn fixed_slot_size_too_small_for_caps() {
    vcambridge_tests::assert_plugin_built("shmring");
    let shm = ShmName::new("small");
    let e = run_fail(
        "sink",
        &mut gst_launch_args(&[
            "videotestsrc",
            "num-buffers=2",
            "!",
            "video/x-raw,format=GRAY8,width=64,height=48",
            "!",
            "shmringsink",
            &format!("shm-name={}", shm.name),
            "slot-size=1000",
            // gst-launch-1.0 1.22 sometimes hangs on any element error during preroll (also
            // with `identity error-after=1`); without preroll it exits reliably.
            "async=false",
        ]),
    );
    assert!(
        e.contains("need 3072 bytes per frame but slot-size is 1024"),
        "{e}"
    );
    assert!(e.contains("raise slot-size or set it to 0"), "{e}");
}
