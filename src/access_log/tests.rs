use super::*;
use std::io::Read;

fn with_entry<R>(path: &str, f: impl FnOnce(&Entry<'_>) -> R) -> R {
    let (method, id) = (
        Method::GET,
        crate::request_id::RequestId::from_static("rid"),
    );
    let uri: Uri = path.parse().unwrap();
    f(&Entry {
        time: SystemTime::now(),
        client: "127.0.0.1".parse().unwrap(),
        method: &method,
        uri: &uri,
        version: Version::HTTP_11,
        host: None,
        status: 200,
        bytes_in: 0,
        bytes_out: 2,
        duration: Duration::from_millis(1),
        upstream: None,
        request_id: &id,
        user_agent: None,
        referer: None,
    })
}

#[test]
fn a_full_queue_drops_and_counts_without_waiting() {
    let (tx, mut rx) = mpsc::channel(1);
    let log = AccessLog::new(
        Sink::Queue {
            tx,
            format: AccessFormat::Json,
        },
        Arc::default(),
    );
    for i in 0..3 {
        with_entry(&format!("/{i}"), |e| log.record(e));
    }
    assert_eq!(log.dropped(), 2);
    let Ok(Msg::Line(first)) = rx.try_recv() else {
        panic!("the first line was queued")
    };
    assert!(String::from_utf8(first)
        .unwrap()
        .contains("\"path\":\"/0\""));
    assert!(rx.try_recv().is_err(), "only one line fits");
}

#[test]
fn the_writer_reopens_by_path_and_flushes_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let lost = Arc::new(AtomicU64::new(0));
    let file = writer::open(&path).unwrap();
    let writer = Writer::new(Target::File(path.clone()), Box::new(file), lost.clone());
    let (tx, rx) = mpsc::channel(16);
    let thread = std::thread::spawn(move || writer.run(rx));
    let send = |msg| tx.blocking_send(msg).ok().unwrap();
    send(Msg::Line(b"one\n".to_vec()));
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    send(Msg::Line(b"two\n".to_vec()));
    send(Msg::Reopen);
    send(Msg::Line(b"three\n".to_vec()));
    let (ack, done) = oneshot::channel();
    send(Msg::Close(ack));
    done.blocking_recv().unwrap();
    thread.join().unwrap();
    let read = |p: &std::path::Path| {
        let mut s = String::new();
        std::fs::File::open(p)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        s
    };
    assert_eq!(read(&rotated), "one\ntwo\n");
    assert_eq!(read(&path), "three\n");
    assert_eq!(lost.load(Ordering::Relaxed), 0);
}

#[test]
fn every_lets_one_through_per_period() {
    let every = Every::ten_seconds();
    assert!(every.ready());
    assert!(!every.ready());
    assert!(!every.ready());
}
