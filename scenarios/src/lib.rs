//! Kestrel's scenarios. Not written yet (issue 5).
