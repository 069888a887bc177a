//! Compile-fail tests: a session used in the wrong state does not compile. One misuse per
//! file under `tests/ui/`, each with its committed `.stderr`, which names the missing
//! method on the wrong state (regenerate with `TRYBUILD=overwrite`, then read them).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
