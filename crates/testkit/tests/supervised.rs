//! The watchdog of a stand-in that stops serving while its process lives on.

use std::{io::Write, time::Duration};

use libertum_testkit::servers;

#[test]
fn a_stand_in_that_stops_serving_is_restarted_on_its_port_with_its_data() {
    let (server, brokers) = servers::kafka_standin();
    let supervised = servers::Supervised::new(server, "UnableToSend");
    let (before, log) = supervised.with(|s| (s.pid(), s.log_path().to_owned()));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(supervised.restarts(), 0, "a serving broker is left alone");
    // The line tansu 0.6.0 logs once its storage loop has ended.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .and_then(|mut f| f.write_all(b"ERROR tansu_broker::broker: error=Storage(UnableToSend)\n"))
        .expect("the log is writable");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while supervised.restarts() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "not restarted 60 s after it stopped serving"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = supervised.with(|s| s.pid());
    assert!(
        after.is_some() && after != before,
        "a new process: {before:?} -> {after:?}"
    );
    std::net::TcpStream::connect(&brokers).expect("it serves on the same port again");
    // Once: the line it already acted on does not restart it again.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(supervised.restarts(), 1);
}
