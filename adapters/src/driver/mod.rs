//! Drivers: they run core's state machines over the ports in tokio. A driver reads the clock
//! (through the `Clock` port), waits for whatever comes first (a timer, a message, a finished
//! probe, a stop), hands it to the state machine with `now`, and carries out the actions it
//! returns; it decides nothing. Generic over the ports, so a whole agent and server run in a
//! test with core's fakes and tokio's paused clock.

pub mod agent;
pub mod server;
pub mod upgrade;
