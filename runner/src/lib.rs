//! Kestrel's VMM. Not written yet (issue 3).
