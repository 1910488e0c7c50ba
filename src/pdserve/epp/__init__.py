"""The endpoint picker: per request, which decode pod serves it and whether and where it is
prefilled. The scheduling core (framework, plugins, scheduler) does no I/O and reads no
clock: time, endpoint state and randomness come in through the `Cycle`, so a virtual-time
simulator can drive the very same plugins as the gRPC server does."""
