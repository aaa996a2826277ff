"""Settings, broker topology and logging shared by the API and the workers."""
