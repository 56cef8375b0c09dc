//! The `libertum` command as a newcomer meets it: every subcommand answers `--help`, errors are
//! one clear line and never a backtrace, and `libertum token` never makes a key of its own.

use std::process::{Command, Output};

fn libertum(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_libertum"));
    command.args(args).env("RUST_BACKTRACE", "1");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("libertum runs")
}

fn one_line_error(output: &Output) -> String {
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
    stderr
}

#[test]
fn every_subcommand_answers_help() {
    for args in [
        &["--help"][..],
        &["token", "--help"],
        &["token", "--role", "auditor", "-h"],
    ] {
        let output = libertum(args, &[]);
        assert!(output.status.success(), "{args:?}: {output:?}");
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("usage: libertum"),
            "{args:?}"
        );
    }
}

#[test]
fn configuration_errors_are_one_line_naming_the_setting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_string_lossy().into_owned();
    let stderr = one_line_error(&libertum(
        &[],
        &[("LIBERTUM_DATA_DIR", &data), ("LIBERTUM_TOKEN", "x")],
    ));
    assert!(
        stderr.contains("LIBERTUM_TOKEN is not a known setting"),
        "{stderr}"
    );
    // The development signer is not for an address others reach, without the opt-in.
    let stderr = one_line_error(&libertum(
        &[],
        &[
            ("LIBERTUM_DATA_DIR", &data),
            ("LIBERTUM_HTTP_ADDR", "0.0.0.0:0"),
        ],
    ));
    assert!(
        stderr.contains("LIBERTUM_AUTH_INSECURE_DEV_SIGNER=true"),
        "{stderr}"
    );
    let stderr = one_line_error(&libertum(&["token", "--role"], &[]));
    assert!(stderr.contains("--role needs a value"), "{stderr}");
}

#[test]
fn a_token_is_never_signed_with_a_key_made_on_the_spot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let stderr = one_line_error(&libertum(
        &["token", "--role", "auditor"],
        &[("LIBERTUM_DATA_DIR", &data.to_string_lossy())],
    ));
    assert!(
        stderr.contains("no development signing key at")
            && stderr.contains("development-signing.key"),
        "{stderr}"
    );
    assert!(!data.exists(), "nothing was made");
    // With the key the product made, it signs, and says with which key on stderr.
    let output = libertum(
        &["token", "--role", "auditor"],
        &[(
            "LIBERTUM_AUTH_DEV_SECRET",
            "a-development-secret-of-at-least-32-bytes",
        )],
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .split('.')
            .count(),
        3
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("LIBERTUM_AUTH_DEV_SECRET"));
}
