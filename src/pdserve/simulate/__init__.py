"""`pdserve simulate`: a manifest's fleet in virtual time, driven by the real EPP scheduling
core and the sim engine's scheduler, so routing and batching questions are answered in
seconds without starting a process."""
