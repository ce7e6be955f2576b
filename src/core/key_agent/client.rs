//! The workers' side of the agent protocol, sans-IO: many requests on one connection,
//! matched by id, each with a deadline. The caller owns the socket (one connection per
//! worker, `crate::agent_socket` or an nginx connection): it sends what [`Client::ask`]
//! encodes, feeds every message it receives to [`Client::receive`], calls
//! [`Client::expire`] from a timer and [`Client::disconnected`] when the connection ends.
//!
//! Invariants: every request asked ends exactly once, answered, expired, cancelled or failed
//! by a disconnection; at most `max_in_flight` wait at once; an answer whose id waits for
//! nothing (late, after its timeout, or forged) is dropped, never given to another request.

use super::wire::{Request, Response, Status, REQUEST_LEN};
use super::AgentError;

/// What a request asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    Dh { key: [u8; 32], point: [u8; 32] },
    PublicKey { index: u16 },
}

/// A successful answer: the DH result, or a public key and how many keys the agent holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    pub value: [u8; 32],
    pub count: u16,
}

struct Waiting<T> {
    id: u32,
    token: T,
    ask: Ask,
    deadline_ms: u64,
}

/// See the module doc. `T` names the request for the caller (a connection, a handshake).
pub struct Client<T> {
    next_id: u32,
    waiting: Vec<Waiting<T>>,
    max_in_flight: usize,
    timeout_ms: u64,
    /// Answers dropped because nothing waited for their id.
    pub stale: u64,
}

impl<T> Client<T> {
    pub fn new(max_in_flight: usize, timeout_ms: u64) -> Self {
        Client {
            next_id: 1,
            waiting: Vec::new(),
            max_in_flight,
            timeout_ms,
            stale: 0,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.waiting.len()
    }

    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }

    /// Registers a request and returns the message to send.
    pub fn ask(
        &mut self,
        token: T,
        ask: Ask,
        now_ms: u64,
    ) -> Result<[u8; REQUEST_LEN], AgentError> {
        if self.waiting.len() >= self.max_in_flight {
            return Err(AgentError::Busy);
        }
        let mut id = self.next_id;
        while self.waiting.iter().any(|w| w.id == id) {
            id = id.wrapping_add(1);
        }
        self.next_id = id.wrapping_add(1);
        let request = match ask {
            Ask::Dh { key, point } => Request::Dh { id, key, point },
            Ask::PublicKey { index } => Request::PublicKey { id, index },
        };
        self.waiting.push(Waiting {
            id,
            token,
            ask,
            deadline_ms: now_ms.saturating_add(self.timeout_ms),
        });
        Ok(request.encode())
    }

    /// A message from the agent: the request it answers and the outcome, or `None` when no
    /// request waits for it (dropped; a message that is no response at all ends nothing
    /// either, as its id cannot be trusted, and is counted in `stale`).
    pub fn receive(&mut self, message: &[u8]) -> Option<(T, Result<Reply, AgentError>)> {
        let Ok(response) = Response::decode(message) else {
            self.stale += 1;
            return None;
        };
        let Some(at) = self.waiting.iter().position(|w| w.id == response.id) else {
            self.stale += 1;
            return None;
        };
        let waiting = self.waiting.swap_remove(at);
        let outcome = match response.status {
            Status::Ok => match waiting.ask {
                Ask::Dh { .. } if response.value == [0; 32] => Err(AgentError::ZeroResult),
                _ => Ok(Reply {
                    value: response.value,
                    count: response.count,
                }),
            },
            status => Err(AgentError::Refused(status)),
        };
        Some((waiting.token, outcome))
    }

    /// The earliest deadline of the requests in flight.
    pub fn next_deadline(&self) -> Option<u64> {
        self.waiting.iter().map(|w| w.deadline_ms).min()
    }

    /// Ends the requests whose deadline passed; their tokens, to fail with
    /// [`AgentError::Timeout`].
    pub fn expire(&mut self, now_ms: u64) -> Vec<T> {
        let mut expired = Vec::new();
        let mut i = 0;
        while i < self.waiting.len() {
            if self.waiting[i].deadline_ms <= now_ms {
                expired.push(self.waiting.swap_remove(i).token);
            } else {
                i += 1;
            }
        }
        expired
    }

    /// The connection ended: every request in flight fails ([`AgentError::Disconnected`]).
    pub fn disconnected(&mut self) -> Vec<T> {
        self.waiting.drain(..).map(|w| w.token).collect()
    }

    /// Forgets the requests of `token` (its connection closed); a late answer is dropped.
    pub fn cancel(&mut self, token: &T)
    where
        T: PartialEq,
    {
        self.waiting.retain(|w| w.token != *token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(request: &[u8; REQUEST_LEN], status: Status, value: [u8; 32]) -> [u8; 40] {
        let id = Request::decode(request).unwrap().id();
        Response {
            id,
            status,
            count: 0,
            value,
        }
        .encode()
    }

    #[test]
    fn answers_match_their_requests_in_any_order() {
        let mut c = Client::new(8, 100);
        let dh = |p: u8| Ask::Dh {
            key: [1; 32],
            point: [p; 32],
        };
        let a = c.ask("a", dh(2), 0).unwrap();
        let b = c.ask("b", dh(3), 0).unwrap();
        assert_ne!(a[4..8], b[4..8], "distinct ids");
        let (t, r) = c.receive(&answer(&b, Status::Ok, [5; 32])).unwrap();
        assert_eq!((t, r.unwrap().value), ("b", [5; 32]));
        let (t, r) = c.receive(&answer(&a, Status::LowOrder, [0; 32])).unwrap();
        assert_eq!((t, r), ("a", Err(AgentError::Refused(Status::LowOrder))));
        assert!(
            c.receive(&answer(&a, Status::Ok, [5; 32])).is_none(),
            "answered once"
        );
        assert_eq!(c.stale, 1);
        let z = c.ask("z", dh(4), 0).unwrap();
        assert_eq!(
            c.receive(&answer(&z, Status::Ok, [0; 32])).unwrap().1,
            Err(AgentError::ZeroResult)
        );
        assert!(c.receive(b"garbage").is_none());
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn bounds_timeouts_and_disconnection_end_every_request() {
        let mut c = Client::new(2, 100);
        let ask = Ask::PublicKey { index: 0 };
        let first = c.ask(1, ask, 0).unwrap();
        c.ask(2, ask, 50).unwrap();
        assert_eq!(c.ask(3, ask, 50), Err(AgentError::Busy));
        assert_eq!(c.next_deadline(), Some(100));
        assert!(c.expire(99).is_empty());
        assert_eq!(c.expire(100), vec![1]);
        assert!(
            c.receive(&answer(&first, Status::Ok, [1; 32])).is_none(),
            "a late answer ends nothing"
        );
        c.ask(3, ask, 60).unwrap();
        c.cancel(&3);
        assert_eq!(c.disconnected(), vec![2]);
        assert_eq!(c.in_flight(), 0);
    }
}
