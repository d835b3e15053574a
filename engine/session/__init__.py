"""Running a model: presets, loading, inputs, the Monitor pipeline, the runner and the live child process."""
