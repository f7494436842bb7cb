//! Sans-I/O HTTP/1.1 pieces shared by the data plane, the control plane and the download client:
//! request-head parsing (httparse inside, with limits), response heads, byte ranges and their
//! `multipart/byteranges` framing, conditional requests (validators), the one client connection
//! (`client`: request builder, response framing, redirects) and the one URL type (`url`).
//! Nothing here touches a socket but `client::blocking`, which is handed its stream.

pub mod client;
pub mod conditional;
pub mod multipart;
pub mod range;
pub mod request;
pub mod response;
pub mod url;

pub use conditional::{Conditions, DigestTag, Validators};
pub use multipart::Framing;
pub use range::{parse_range, ByteRange, RangeOutcome};
pub use request::{parse_request, Method, Parsed, Request, RequestError, RequestLimits, Version};
pub use response::{reason_phrase, text_response, ContentRange, ResponseHead};
