"""Data made here, offline, for the demo, the tests and the miniature experiments: scikit-learn's
handwritten digits as shards (digits), 3-object binding scenes (scenes) and single-object
attribute images (attributes). Apart from the production stream (llip.data.stream)."""
