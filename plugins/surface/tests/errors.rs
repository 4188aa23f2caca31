// SPDX-License-Identifier: MPL-2.0
//! Errors a user can act on, for surfacesink/surfacesrc: bad paths, permissions, foreign files at the socket
//! path and protocol version mismatches give clear errors (and never hang), checked on the
//! messages gst-launch-1.0 prints and on the Python reader.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use gstsurface::platform::{Channel, Listener, Received, wait_readable};
use gstsurface::wire::{self, Message, Role};
use vcambridge_tests::{gst_command, run_with_timeout, wait_for};

fn launch(desc: &str) -> Output {
    let mut cmd = gst_command("gst-launch-1.0");
    cmd.args(desc.split_whitespace());
    run_with_timeout("gst-launch-1.0", &mut cmd, Duration::from_secs(20))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn writer_desc(sock: &Path) -> String {
    format!(
        "videotestsrc num-buffers=5 ! {CAPS} ! surfacesink socket-path={}",
        sock.display()
    )
}

fn assert_fails_with(out: &Output, needles: &[&str]) {
    let t = text(out);
    assert!(!out.status.success(), "expected failure, got success:\n{t}");
    for n in needles {
        assert!(t.contains(n), "expected {n:?} in:\n{t}");
    }
}

#[test]
fn sink_without_socket_path() {
    let out = launch(&format!(
        "videotestsrc num-buffers=1 ! {CAPS} ! surfacesink"
    ));
    assert_fails_with(&out, &["surfacesink needs socket-path"]);
}

#[test]
fn sink_in_missing_directory() {
    let out = launch(&writer_desc(Path::new(
        "/nonexistent-vcambridge/dir/s.sock",
    )));
    assert_fails_with(
        &out,
        &[
            "/nonexistent-vcambridge/dir/s.sock",
            "directory /nonexistent-vcambridge/dir does not exist",
        ],
    );
}

#[test]
fn sink_path_too_long() {
    let (dir, _) = sock_dir();
    let sock = dir.path().join("x".repeat(110));
    let out = launch(&writer_desc(&sock));
    assert_fails_with(&out, &["too long for a Unix socket"]);
}

#[test]
fn sink_refuses_foreign_file_and_directory() {
    let (dir, sock) = sock_dir();
    std::fs::write(&sock, b"precious").unwrap();
    let out = launch(&writer_desc(&sock));
    assert_fails_with(
        &out,
        &[
            &sock.display().to_string(),
            "not a socket",
            "refusing to replace",
        ],
    );
    assert_eq!(std::fs::read(&sock).unwrap(), b"precious", "file untouched");

    let sub = dir.path().join("adir");
    std::fs::create_dir(&sub).unwrap();
    let out = launch(&writer_desc(&sub));
    assert_fails_with(&out, &["is a directory", "refusing to replace"]);
    assert!(sub.is_dir());
}

/// A live writer's socket is never stolen; a dead writer's stale socket is replaced; the socket
/// is created 0600.
#[test]
fn live_socket_refused_stale_socket_replaced_mode_0600() {
    let (_dir, sock) = sock_dir();
    let w1 = gst_writer(&sock, "videotestsrc is-live=true", "");
    wait_for(Duration::from_secs(10), "writer socket", || {
        sock.exists().then_some(())
    });
    let md = std::fs::symlink_metadata(&sock).unwrap();
    assert!(md.file_type().is_socket());
    assert_eq!(md.permissions().mode() & 0o777, 0o600, "socket mode");

    let out = launch(&writer_desc(&sock));
    assert_fails_with(
        &out,
        &[&sock.display().to_string(), "in use by a running writer"],
    );

    w1.signal(libc::SIGKILL);
    drop(w1);
    assert!(
        sock.exists(),
        "stale socket left behind by the killed writer"
    );
    let py = py_reader(&sock, &[]);
    let out = launch(&format!(
        "{} wait-for-connection=true surfaces=16",
        writer_desc(&sock)
    ));
    assert!(
        out.status.success(),
        "stale socket replaced: {}",
        text(&out)
    );
    let json = py.finish_ok(Duration::from_secs(10));
    assert_eq!(frames_of(&json).len(), 5);
}

/// Another user cannot connect: the socket is 0600 (the directory is open to all here). Checked
/// with the Python reader and, where that user can load our plugin, with surfacesrc.
#[test]
fn reader_of_another_user_gets_permission_denied() {
    if !vcambridge_tests::have_program("setpriv") {
        eprintln!("skipping: setpriv (util-linux) not installed");
        return;
    }
    // SAFETY: plain geteuid(2).
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: switching to another user needs root");
        return;
    }
    let (dir, sock) = sock_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let _w = gst_writer(&sock, "videotestsrc is-live=true", "");
    wait_for(Duration::from_secs(10), "writer socket", || {
        sock.exists().then_some(())
    });
    let as_nobody = || {
        let mut cmd = gst_command("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .env("GST_REGISTRY", dir.path().join("registry.bin"))
            .env("HOME", dir.path());
        cmd
    };

    // The reader script is copied where that user can read it.
    let script = dir.path().join("surface_reader.py");
    std::fs::copy(reader_script(), &script).unwrap();
    // The system interpreter: a per-user one (pyenv, the venv under root's checkout) may not be
    // reachable for that user.
    let system_python = Path::new("/usr/bin/python3");
    if system_python.exists() {
        let mut cmd = as_nobody();
        cmd.arg(system_python)
            .args([script.to_str().unwrap(), sock.to_str().unwrap()]);
        let out = run_with_timeout("python reader as nobody", &mut cmd, Duration::from_secs(30));
        assert_eq!(out.status.code(), Some(4), "{}", text(&out));
        assert!(
            text(&out).contains("permission denied connecting to"),
            "{}",
            text(&out)
        );
    } else {
        eprintln!("note: no /usr/bin/python3; Python part skipped");
    }

    let mut probe = as_nobody();
    probe.args(["gst-inspect-1.0", "surfacesrc"]);
    if !run_with_timeout("gst-inspect as nobody", &mut probe, Duration::from_secs(30))
        .status
        .success()
    {
        eprintln!(
            "note: user nobody cannot load the plugin from this checkout; surfacesrc part skipped"
        );
        return;
    }
    let mut cmd = as_nobody();
    cmd.arg("gst-launch-1.0").args(
        format!(
            "surfacesrc socket-path={} timeout=2000 ! fakesink",
            sock.display()
        )
        .split_whitespace(),
    );
    let out = run_with_timeout("surfacesrc as nobody", &mut cmd, Duration::from_secs(30));
    assert_fails_with(&out, &["permission denied connecting to", "0600"]);
}

#[test]
fn src_without_writer_times_out() {
    let (_dir, sock) = sock_dir();
    let start = Instant::now();
    let out = launch(&format!(
        "surfacesrc socket-path={} timeout=300 ! fakesink",
        sock.display()
    ));
    assert_fails_with(
        &out,
        &[
            &format!("no surfacesink at {} within 300 ms", sock.display()),
            "is the writer running",
        ],
    );
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn src_without_socket_path() {
    let out = launch("surfacesrc ! fakesink");
    assert_fails_with(&out, &["surfacesrc needs socket-path"]);
}

#[test]
fn src_on_regular_file_and_foreign_socket() {
    let (dir, sock) = sock_dir();
    std::fs::write(&sock, b"x").unwrap();
    let out = launch(&format!(
        "surfacesrc socket-path={} timeout=5000 ! fakesink",
        sock.display()
    ));
    assert_fails_with(&out, &["is not a socket"]);

    let stream = dir.path().join("stream.sock");
    let _l = std::os::unix::net::UnixListener::bind(&stream).unwrap();
    let out = launch(&format!(
        "surfacesrc socket-path={} timeout=5000 ! fakesink",
        stream.display()
    ));
    assert_fails_with(&out, &["not a surfacesink socket"]);
}

/// A reader speaking another protocol version: the writer refuses it with an explanation and
/// keeps serving others; the Python reader reports the mismatch.
#[test]
fn version_mismatch_reader_side_and_writer_side() {
    let (_dir, sock) = sock_dir();
    let _w = gst_writer(&sock, "videotestsrc is-live=true", "");
    let py = py_reader(&sock, &["--protocol-version", "2"]);
    let err = py.finish_error(Duration::from_secs(15), 2, "python reader");
    assert!(err.contains("protocol version mismatch"), "{err}");

    // Raw client: hello with version 2 => the writer answers with an Error naming both versions.
    let chan = Channel::connect(&sock).unwrap();
    let mut hello = Message::Hello {
        role: Role::Reader,
        pid: 1,
        session: 0,
    }
    .encode();
    hello[4..6].copy_from_slice(&2u16.to_le_bytes());
    chan.send(&hello, None).unwrap();
    let mut buf = vec![0u8; wire::MAX_MESSAGE_LEN];
    let deadline = Instant::now() + Duration::from_secs(10);
    let refusal = loop {
        assert!(Instant::now() < deadline, "no refusal from the writer");
        wait_readable(&[chan.raw_fd()], Duration::from_millis(200)).unwrap();
        match chan.recv(&mut buf).unwrap() {
            Received::Message { len, .. } => {
                if let Ok(Message::Error { code, message }) = Message::decode(&buf[..len]) {
                    break (code, message);
                }
            }
            Received::WouldBlock => {}
            Received::Closed => panic!("closed without an explanation"),
        }
    };
    assert_eq!(refusal.0, wire::error_code::VERSION_MISMATCH);
    assert!(
        refusal.1.contains("version 2") && refusal.1.contains("version 1"),
        "{}",
        refusal.1
    );

    // The writer is unaffected: a current reader still gets frames.
    let py = py_reader(&sock, &["--frames", "3"]);
    let json = py.finish_ok(Duration::from_secs(15));
    assert_eq!(frames_of(&json).len(), 3);
}

/// surfacesrc meets a writer of another protocol version: a clear error, no hang.
#[test]
fn version_mismatch_surfacesrc() {
    let (_dir, sock) = sock_dir();
    let listener = Listener::bind(&sock).unwrap();
    let fake = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            wait_readable(&[listener.raw_fd()], Duration::from_millis(200)).unwrap();
            if let Some(chan) = listener.accept().unwrap() {
                let mut hello = Message::Hello {
                    role: Role::Writer,
                    pid: 1,
                    session: 7,
                }
                .encode();
                hello[4..6].copy_from_slice(&2u16.to_le_bytes());
                chan.send(&hello, None).unwrap();
                std::thread::sleep(Duration::from_secs(2));
                return;
            }
        }
    });
    let out = launch(&format!(
        "surfacesrc socket-path={} timeout=5000 ! fakesink",
        sock.display()
    ));
    assert_fails_with(
        &out,
        &[
            &sock.display().to_string(),
            "protocol version mismatch: peer speaks version 2, we speak version 1",
        ],
    );
    let _ = fake.join();
}

/// What sits at the writer's temporary socket name (`<socket-path>.<pid>.tmp`) is never removed:
/// a regular file there stays as it was and another name is used; when every temporary name is
/// taken (directories here) the error names the path instead of "Address already in use".
/// In-process, so the test knows the writer's pid.
#[test]
fn temporary_socket_name_taken_by_foreign_files() {
    let (dir, sock) = sock_dir();
    let pid = std::process::id();
    let tmp0 = dir.path().join(format!("s.sock.{pid}.tmp"));
    std::fs::write(&tmp0, b"precious").unwrap();
    let desc = format!(
        "videotestsrc is-live=true ! {CAPS} ! surfacesink socket-path={}",
        sock.display()
    );
    let p = Pipe::launch(&desc);
    p.set(gst::State::Playing);
    wait_for(Duration::from_secs(10), "writer socket", || {
        sock.exists().then_some(())
    });
    assert!(
        std::fs::symlink_metadata(&sock)
            .unwrap()
            .file_type()
            .is_socket()
    );
    assert_eq!(std::fs::read(&tmp0).unwrap(), b"precious", "file untouched");
    drop(p);

    std::fs::remove_file(&tmp0).unwrap();
    std::fs::create_dir(&tmp0).unwrap();
    for n in 1..8 {
        std::fs::create_dir(dir.path().join(format!("s.sock.{pid}.{n}.tmp"))).unwrap();
    }
    let p = Pipe::launch(&desc);
    p.set(gst::State::Playing);
    let err = p.wait_error(Duration::from_secs(10));
    assert!(
        err.contains(&format!("cannot create socket {}", sock.display()))
            && err.contains(&format!("s.sock.{pid}.tmp is a directory"))
            && err.contains("left untouched"),
        "{err}"
    );
    assert!(!err.contains("Address already in use"), "{err}");
    assert!(tmp0.is_dir());
}
