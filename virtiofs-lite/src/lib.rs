//! Kestrel's virtio-fs server. Not written yet (issue 4).
