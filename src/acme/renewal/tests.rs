//! The renewal decisions on RFC 9773's examples (no test CA here speaks ARI: Debian's Pebble
//! 2.4.0 has no `renewalInfo` in its directory).

use super::*;

/// RFC 9773 §4.1's example certificate: AKI keyIdentifier and serial number bytes.
const RFC_AKI: [u8; 20] = [
    0x69, 0x88, 0x5B, 0x6B, 0x87, 0x46, 0x40, 0x41, 0xE1, 0xB3, 0x7B, 0x84, 0x7B, 0xA0, 0xAE, 0x2C,
    0xDE, 0x01, 0xC8, 0xD4,
];
const RFC_SERIAL: [u8; 5] = [0x00, 0x87, 0x65, 0x43, 0x21];
const RFC_CERT_ID: &str = "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE";

/// RFC 9773 §4.2's example RenewalInfo (served with `Retry-After: 21600`).
const RFC_INFO: &str = r#"{
  "suggestedWindow": {
    "start": "2025-01-02T04:00:00Z",
    "end": "2025-01-03T04:00:00Z"
  },
  "explanationURL": "https://acme.example.com/docs/ari"
}"#;
const START: u64 = 1_735_790_400; // 2025-01-02T04:00:00Z
const END: u64 = 1_735_876_800; // 2025-01-03T04:00:00Z
const WINDOW: Window = Window {
    start: START,
    end: END,
};
const HOUR: u64 = 3600;
const DAY: u64 = 86_400;

/// A 90-day certificate ending 30 days after the window: a third left is 2025-01-03T04:00Z - 0.
fn info() -> CertInfo {
    let not_after = time(END + 30 * DAY);
    CertInfo {
        names: vec!["a.test".into()],
        issuer: "ca".into(),
        not_before: not_after - Duration::from_secs(90 * DAY),
        not_after,
    }
}

fn rfc_answer() -> Answer {
    let info: RenewalInfo = serde_json::from_str(RFC_INFO).unwrap();
    Answer::Window {
        window: window_of(&info).unwrap(),
        explanation_url: info.explanation_url,
        retry_after: Duration::from_secs(21_600),
    }
}

#[test]
fn the_cert_id_is_base64url_aki_dot_serial() {
    assert_eq!(cert_id_of(&RFC_AKI, &RFC_SERIAL).to_string(), RFC_CERT_ID);
}

#[test]
fn the_cert_id_is_read_from_a_certificate() {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(RFC_AKI.to_vec());
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca.self_signed(&ca_key).unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
    leaf.use_authority_key_identifier_extension = true;
    leaf.serial_number = Some(rcgen::SerialNumber::from_slice(&RFC_SERIAL));
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
    let der = CertificateDer::from(leaf.der().to_vec());
    assert_eq!(cert_id(&der).unwrap().to_string(), RFC_CERT_ID);

    // self-signed, no AKI: no CertID, and no request about it
    let made = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
    let der = CertificateDer::from(made.cert.der().to_vec());
    assert!(cert_id(&der)
        .unwrap_err()
        .contains("Authority Key Identifier"));
}

#[test]
fn the_rfc_example_window_is_read_and_a_backwards_one_refused() {
    let info: RenewalInfo = serde_json::from_str(RFC_INFO).unwrap();
    assert_eq!(window_of(&info), Some(WINDOW));
    let backwards = RFC_INFO.replace("2025-01-03T04", "2025-01-02T04");
    let info: RenewalInfo = serde_json::from_str(&backwards).unwrap();
    assert_eq!(window_of(&info), None, "end == start is no window");
}

#[test]
fn the_renewal_time_is_drawn_inside_the_window() {
    let before = START - DAY;
    assert_eq!(choose(WINDOW, before, 0.0), START);
    assert_eq!(choose(WINDOW, before, 0.5), START + DAY / 2);
    assert!(choose(WINDOW, before, 0.999_999) < END);
    for _ in 0..1000 {
        let at = choose(WINDOW, before, fastrand::f64());
        assert!((START..END).contains(&at), "{at} outside the window");
    }
}

#[test]
fn a_window_in_the_past_means_now() {
    let later = END + HOUR;
    assert_eq!(choose(WINDOW, later, 0.0), later);
    assert_eq!(choose(WINDOW, later, 0.9), later);
    // inside the window, a draw before now is now too
    let inside = START + HOUR;
    assert_eq!(choose(WINDOW, inside, 0.0), inside);
    assert_eq!(choose(WINDOW, inside, 0.5), START + DAY / 2);
}

#[test]
fn the_ca_window_is_planned_and_retry_after_sets_the_next_check() {
    let now = time(START - 10 * DAY);
    let plan = plan(None, RFC_CERT_ID, &info(), rfc_answer(), now, 0.25);
    assert_eq!(plan.source, Source::Ari);
    assert_eq!(plan.window, Some(WINDOW));
    assert_eq!(plan.renew_at, START + DAY / 4);
    assert_eq!(plan.next_check, secs(now) + 21_600, "Retry-After: 21600");
    assert_eq!(
        plan.explanation_url.as_deref(),
        Some("https://acme.example.com/docs/ari")
    );
}

#[test]
fn retry_after_is_held_to_a_minute_through_a_day() {
    assert_eq!(recheck(Duration::ZERO), Duration::from_secs(60));
    assert_eq!(
        recheck(Duration::from_secs(7 * DAY)),
        Duration::from_secs(DAY)
    );
    assert_eq!(
        recheck(Duration::from_secs(HOUR)),
        Duration::from_secs(HOUR)
    );
}

#[test]
fn an_unchanged_window_keeps_its_draw_and_a_moved_one_draws_again() {
    let now = time(START - 10 * DAY);
    let first = plan(None, RFC_CERT_ID, &info(), rfc_answer(), now, 0.25);
    let again = plan(Some(&first), RFC_CERT_ID, &info(), rfc_answer(), now, 0.75);
    assert_eq!(again.renew_at, first.renew_at);
    assert!(!moved_earlier(Some(&first), &again));

    // revocation ahead: the CA moves the window to the past
    let moved = Answer::Window {
        window: Window {
            start: START - 20 * DAY,
            end: START - 19 * DAY,
        },
        explanation_url: Some("https://ca.example/incident".into()),
        retry_after: Duration::from_secs(HOUR),
    };
    let urgent = plan(Some(&first), RFC_CERT_ID, &info(), moved, now, 0.75);
    assert_eq!(urgent.renew_at, secs(now), "a past window: renew now");
    assert!(moved_earlier(Some(&first), &urgent));
    // another certificate's plan says nothing about this one
    let other = Plan {
        cert: "other.id".into(),
        ..first.clone()
    };
    assert!(!moved_earlier(Some(&other), &urgent));
}

#[test]
fn without_ari_a_third_of_the_lifetime_is_left() {
    let now = time(START);
    let plan = plan(None, RFC_CERT_ID, &info(), Answer::NoAri, now, 0.5);
    assert_eq!(plan.source, Source::Lifetime);
    assert_eq!(plan.renew_at, secs(info().renew_at()));
    assert_eq!(plan.renew_at, END, "90 days, renewed with 30 left");
    assert_eq!(plan.next_check, START + DAY, "asked again in a day");
    assert!(plan.describe().starts_with("a third of the lifetime"));
}

#[test]
fn a_failed_request_falls_back_or_keeps_the_cas_last_word() {
    let now = time(START - 10 * DAY);
    let failed = || Answer::Failed("connection refused".into());
    let plan_a = plan(None, RFC_CERT_ID, &info(), failed(), now, 0.5);
    assert_eq!(plan_a.source, Source::Lifetime);
    assert_eq!(plan_a.renew_at, END);
    assert_eq!(plan_a.next_check, secs(now) + HOUR);
    assert!(plan_a.note.unwrap().contains("connection refused"));

    let told = plan(None, RFC_CERT_ID, &info(), rfc_answer(), now, 0.25);
    let kept = plan(Some(&told), RFC_CERT_ID, &info(), failed(), now, 0.9);
    assert_eq!((kept.source, kept.window), (Source::Ari, Some(WINDOW)));
    assert_eq!(kept.renew_at, told.renew_at);
    assert_eq!(kept.next_check, secs(now) + HOUR);

    // what the CA said about the certificate before this one does not count
    let renewed = plan(Some(&told), "new.id", &info(), failed(), now, 0.9);
    assert_eq!(renewed.source, Source::Lifetime);
}

#[test]
fn the_stored_plan_is_used_only_for_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
    let leaf = CertificateDer::from(made.cert.der().to_vec());
    // nothing stored: a third of the lifetime, "not asked yet"
    let shown = stored_plan(dir.path(), &leaf, &info());
    assert_eq!(shown.source, Source::Lifetime);
    assert!(
        shown.describe().contains("not been asked"),
        "{}",
        shown.describe()
    );

    // a plan for this certificate (no CertID: "") is shown as stored
    let told = plan(None, "", &info(), rfc_answer(), time(START - DAY), 0.5);
    let json = serde_json::to_vec(&told).unwrap();
    std::fs::write(dir.path().join(FILE), json).unwrap();
    assert_eq!(stored_plan(dir.path(), &leaf, &info()), told);
    let text = told.describe();
    assert!(
        text.starts_with("ari window 2025-01-02T04:00:00Z to 2025-01-03T04:00:00Z")
            && text.contains("https://acme.example.com/docs/ari"),
        "{text}"
    );

    // a plan for another certificate is not
    let other = Plan {
        cert: RFC_CERT_ID.into(),
        ..told
    };
    std::fs::write(dir.path().join(FILE), serde_json::to_vec(&other).unwrap()).unwrap();
    assert_eq!(
        stored_plan(dir.path(), &leaf, &info()).source,
        Source::Lifetime
    );
}

/// A leaf signed by a CA, so it has an AKI and a CertID.
fn leaf_with_aki() -> CertificateDer<'static> {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca.self_signed(&ca_key).unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
    leaf.use_authority_key_identifier_extension = true;
    let key = rcgen::KeyPair::generate().unwrap();
    CertificateDer::from(leaf.signed_by(&key, &ca, &ca_key).unwrap().der().to_vec())
}

/// An issuer whose CA nobody answers at: any request to it fails at once.
fn unreachable_issuer(state: &Path) -> Issuer {
    let settings = crate::config::Acme {
        directory: "https://127.0.0.1:9/directory".into(),
        ..crate::config::Acme::default()
    };
    let challenges = std::sync::Arc::new(super::super::Challenges::default());
    Issuer::new(settings, store::Store::new(state), challenges)
}

/// After a restart the stored plan stands until its `next_check`: the CA is not asked (here
/// it could not answer, which would have noted a failure); once that time has passed, it is.
#[tokio::test]
async fn a_restart_resumes_the_stored_plan_until_its_next_check() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("cert");
    let leaf = leaf_with_aki();
    let id = cert_id(&leaf).unwrap().to_string();
    let info = CertInfo {
        not_after: SystemTime::now() + Duration::from_secs(60 * DAY),
        ..info()
    };
    let now = secs(SystemTime::now());
    let stored = Plan {
        cert: id.clone(),
        source: Source::Ari,
        renew_at: now + 20 * DAY,
        window: Some(Window {
            start: now + 19 * DAY,
            end: now + 21 * DAY,
        }),
        explanation_url: None,
        next_check: now + HOUR,
        note: None,
    };
    store::write_atomic(
        &dir.join(FILE),
        &serde_json::to_vec(&stored).unwrap(),
        0o644,
    )
    .unwrap();
    let issuer = unreachable_issuer(state.path());

    let mut schedule = Schedule::load(&dir).await;
    let due = schedule.due(&issuer, Some(&leaf), &info, "a.test").await;
    assert_eq!(secs(due.renew_at), stored.renew_at);
    assert_eq!(due.source, Source::Ari);
    assert_eq!(
        read(&dir),
        Some(stored.clone()),
        "asked the CA before next_check"
    );
    assert_eq!(
        schedule.replaces(Some(&leaf)).map(|r| r.to_string()),
        Some(id.clone()),
        "an ARI-covered certificate is replaced by name"
    );

    // the check fell due while the process was down: asked at once; the CA's window stands
    let overdue = Plan {
        next_check: now - HOUR,
        ..stored.clone()
    };
    store::write_atomic(
        &dir.join(FILE),
        &serde_json::to_vec(&overdue).unwrap(),
        0o644,
    )
    .unwrap();
    let mut schedule = Schedule::load(&dir).await;
    let due = schedule.due(&issuer, Some(&leaf), &info, "a.test").await;
    assert_eq!(secs(due.renew_at), stored.renew_at);
    let after = read(&dir).unwrap();
    assert!(after.note.unwrap().contains("the last ARI request failed"));
    assert!(after.next_check >= now + HOUR);
}
