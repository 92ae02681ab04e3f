"""What a refit may be asked for, importable without scikit-learn (the command line reads these
for its options and loads the fitting only when a command fits)."""

FAMILIES = ("kmeans", "gaussian_mixture", "agglomerative", "dbscan", "hdbscan")
MIN_PROFILES = 200  # fewer and a refit is refused (``fitting.TooFewProfiles``)
DEFAULT_SAMPLE = 20_000  # profiles a refit samples unless told
