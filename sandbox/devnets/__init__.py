"""Local chains for tests, demos and the city simulation, started and stopped by their own PIDs."""
