//! Shared helpers for cairn's integration tests (the tests themselves are in
//! `integration/`, one binary so that linking happens once).
