//! The serving loop: the mount is live until a signal, `unmount`, an unmount from outside or the
//! end of its own session stops it; then one teardown and the last audit record.

use super::process::Reporter;
use super::startup::Started;
use super::status::summary;
use super::{Exit, Stop, control, tasks};
use crate::audit::{Event, Outcome};

/// Announce the mount, run the background tasks until something stops it, take it down and
/// write the last audit record: the exit code says why it stopped.
pub(super) async fn serve(started: Started, reporter: &mut Reporter) -> Exit {
    let Started {
        shared,
        session,
        policies,
        revocation_note,
        watch,
        bg,
        mut ended,
        conn,
        listener,
        stop_tx,
        mut stop_rx,
    } = started;
    let audit = shared.audit.clone();
    let mountpoint = shared.mountpoint.clone();
    reporter.ready(&summary(&shared, &session, &policies, &revocation_note));
    let handles = tasks::spawn_all(shared.clone(), listener, watch, stop_tx.clone());

    let stop = tokio::select! {
        Some(stop) = stop_rx.recv() => stop,
        () = ended.wait() => Stop::Unmounted,
    };
    for h in handles {
        h.abort();
    }
    let _ = std::fs::remove_file(control::socket_path(&mountpoint));
    if let (Stop::SessionEnded(_), Some(conn)) = (&stop, conn)
        && shared.fs.passthrough()
        && shared.spec.on_revoke == super::ending::OnRevoke::Kill
    {
        let (shared, session) = (shared.clone(), session.clone());
        let _ = tokio::task::spawn_blocking(move || {
            super::ending::stop_holders(&shared, &session, conn)
        })
        .await;
    }
    tasks::teardown(bg, ended, &mountpoint, conn).await;
    let (code, reason) = match &stop {
        Stop::Signal(name) => (Exit::Ok, format!("stopped by {name}")),
        Stop::Requested => (Exit::Ok, "unmount requested".to_owned()),
        Stop::Unmounted => (Exit::Ok, "unmounted from outside".to_owned()),
        Stop::SessionEnded(why) => (
            Exit::SessionEnded,
            format!("the mount's session ended: {why}"),
        ),
    };
    let g = session.grants();
    audit.record(
        Event::new("mount.unmounted", Outcome::Allowed, g.actor(), "unmount")
            .reason(reason.clone())
            .meta("mountpoint", mountpoint.display().to_string())
            .meta(
                "allowed",
                shared
                    .fs
                    .stats()
                    .allowed
                    .load(std::sync::atomic::Ordering::Relaxed),
            )
            .meta(
                "denied",
                shared
                    .fs
                    .stats()
                    .denied
                    .load(std::sync::atomic::Ordering::Relaxed),
            ),
    );
    if let Err(e) = audit.close() {
        eprintln!("relayauth-mount: the audit log could not be written completely: {e}");
    }
    if code != Exit::Ok {
        eprintln!(
            "relayauth-mount: {reason}; {} was unmounted",
            mountpoint.display()
        );
    }
    code
}
