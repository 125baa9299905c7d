//! What both ends of an attach stream share at run time: frames and flow control (a
//! bounded data lane, a control lane that overtakes it, credit), and the W3C trace
//! context that follows an envelope across hops.
//!
//! The SDK and the node write frames the same way, so the code lives here once, beside
//! the wire types (`reef-proto`) it batches.
//!
//! ```
//! use reef_frames::Credit;
//!
//! let credit = Credit::new(2);
//! assert_eq!(credit.available(), 2);
//! credit.add(3);
//! assert_eq!(credit.available(), 5);
//! ```
#![warn(missing_docs)]

mod frames;
pub mod trace;

pub use self::frames::{
    Credit, FrameBatcher, FrameLimits, Mailbox, QueueClosed, enqueue, room_for_batch,
};
