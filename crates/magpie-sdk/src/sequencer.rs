//! Per-conversation ordering: the cursor / gap state machine of PROTOCOL.md §7.
//!
//! Pure and synchronous: it is fed messages (from pushes, send answers and fetched pages) and
//! answers which ones to hand to the app now, in what order, and whether the gap below the
//! buffered ones has to be fetched. It performs no I/O and no locking; the session calls it
//! under one lock and persists the resulting cursor together with the delivered messages.
//!
//! Per conversation it keeps a *cursor* (the highest seq delivered with no gap below), the
//! *target* (the highest seq known to exist), the messages received above a gap, and whether a
//! catch-up fetch is in flight. A message is delivered only when its seq is `cursor + 1`, so the
//! app sees every seq once and in order no matter in which order the sources report them.

use std::collections::{BTreeMap, HashMap};

use magpie_proto::{ConversationId, Message};

/// What became of an offered message.
#[derive(Debug, PartialEq)]
pub(crate) enum Offer {
    /// A transient message (a command, seq 0): hand it to the app once, never store it.
    Transient(Box<Message>),
    /// Already delivered or already waiting: drop it.
    Duplicate,
    /// Accepted. `deliver` (possibly empty, if the message waits above a gap) must be stored
    /// and handed to the app in this order; `start_fetch` asks the caller to start a catch-up.
    Accepted {
        deliver: Vec<Message>,
        start_fetch: bool,
    },
}

/// What a catch-up should do next for a conversation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FetchPlan {
    /// Nothing is missing.
    UpToDate,
    /// Another fetch is in flight for this conversation; wait for it.
    InFlight,
    /// Fetch forward from (excluding) this seq. The conversation is now marked in flight until
    /// [`Sequencer::finish_fetch`] or [`Sequencer::abort_fetch`].
    Fetch { after: u64 },
}

/// The outcome of a fetched page.
#[derive(Debug, PartialEq)]
pub(crate) struct Fetched {
    /// Messages to store and hand to the app, in order.
    pub(crate) deliver: Vec<Message>,
    /// A gap the server could not fill and that was skipped, as `(first, last)` missing seqs.
    pub(crate) skipped: Option<(u64, u64)>,
}

#[derive(Debug, Default)]
struct Lane {
    cursor: u64,
    target: u64,
    waiting: BTreeMap<u64, Message>,
    /// The cursor the in-flight fetch started from, if one is in flight.
    fetching: Option<u64>,
}

impl Lane {
    fn at(cursor: u64) -> Self {
        Self {
            cursor,
            target: cursor,
            ..Self::default()
        }
    }

    fn behind(&self) -> bool {
        self.target > self.cursor || !self.waiting.is_empty()
    }

    /// Moves every message that now follows the cursor without a gap into `out`.
    fn drain_contiguous(&mut self, out: &mut Vec<Message>) {
        while let Some(entry) = self.waiting.first_entry() {
            if *entry.key() > self.cursor + 1 {
                break;
            }
            let (seq, message) = entry.remove_entry();
            if seq == self.cursor + 1 {
                self.cursor = seq;
                out.push(message);
            }
        }
    }

    /// Places one message: delivered if it is next, kept if above a gap, dropped if old.
    fn place(&mut self, message: Message, out: &mut Vec<Message>) -> bool {
        let seq = message.seq;
        if seq <= self.cursor || self.waiting.contains_key(&seq) {
            return false;
        }
        self.target = self.target.max(seq);
        if seq == self.cursor + 1 {
            self.cursor = seq;
            out.push(message);
            self.drain_contiguous(out);
        } else {
            self.waiting.insert(seq, message);
        }
        true
    }
}

/// The ordering state of every conversation of one user.
#[derive(Debug, Default)]
pub(crate) struct Sequencer {
    lanes: HashMap<ConversationId, Lane>,
    initial_window: Option<u64>,
}

impl Sequencer {
    /// A sequencer that starts conversations new to this device `initial_window` messages
    /// before the newest (`None`: from the beginning).
    pub(crate) fn new(initial_window: Option<u64>) -> Self {
        Self {
            lanes: HashMap::new(),
            initial_window,
        }
    }

    /// Restores a persisted cursor (at startup, before anything is offered).
    pub(crate) fn restore(&mut self, conversation: ConversationId, cursor: u64) {
        self.lanes
            .entry(conversation)
            .or_insert_with(|| Lane::at(cursor));
    }

    /// The cursor of a conversation, `None` if this device has never seen it.
    #[cfg(test)]
    fn cursor(&self, conversation: &ConversationId) -> Option<u64> {
        self.lanes.get(conversation).map(|l| l.cursor)
    }

    fn lane_for_new(&mut self, conversation: &ConversationId, newest_history: u64) -> &mut Lane {
        let window = self.initial_window;
        self.lanes
            .entry(conversation.clone())
            .or_insert_with(|| Lane::at(window.map_or(0, |n| newest_history.saturating_sub(n))))
    }

    /// Offers a message from a push or a send answer.
    pub(crate) fn offer(&mut self, message: Message) -> Offer {
        if message.seq == 0 || !message.content.is_stored() {
            return Offer::Transient(Box::new(message));
        }
        // A pushed message is live, not history: a window of n keeps n messages before it.
        let lane = self.lane_for_new(&message.conversation_id, message.seq - 1);
        let mut deliver = Vec::new();
        if !lane.place(message, &mut deliver) {
            return Offer::Duplicate;
        }
        Offer::Accepted {
            deliver,
            start_fetch: lane.behind() && lane.fetching.is_none(),
        }
    }

    /// Records that a conversation holds messages up to `last_seq` (from `sync`). A
    /// conversation new to this device gets its starting cursor here. Returns the cursor and
    /// whether the conversation was new.
    pub(crate) fn observe_last_seq(
        &mut self,
        conversation: &ConversationId,
        last_seq: u64,
    ) -> (u64, bool) {
        let new = !self.lanes.contains_key(conversation);
        let lane = self.lane_for_new(conversation, last_seq);
        lane.target = lane.target.max(last_seq);
        (lane.cursor, new)
    }

    /// The cursor of a conversation: the highest seq held with no gap below (0 if unknown).
    pub(crate) fn held(&self, conversation: &ConversationId) -> u64 {
        self.lanes.get(conversation).map_or(0, |l| l.cursor)
    }

    /// Whether a conversation has messages to fetch and no fetch in flight.
    #[cfg(test)]
    fn needs_fetch(&self, conversation: &ConversationId) -> bool {
        self.lanes
            .get(conversation)
            .is_some_and(|l| l.behind() && l.fetching.is_none())
    }

    /// Decides the next catch-up step for a conversation.
    pub(crate) fn begin_fetch(&mut self, conversation: &ConversationId) -> FetchPlan {
        match self.lanes.get_mut(conversation) {
            None => FetchPlan::UpToDate,
            Some(lane) if lane.fetching.is_some() => FetchPlan::InFlight,
            Some(lane) if lane.behind() => {
                lane.fetching = Some(lane.cursor);
                FetchPlan::Fetch { after: lane.cursor }
            }
            Some(_) => FetchPlan::UpToDate,
        }
    }

    /// Merges a fetched page (any order, possibly overlapping what was delivered meanwhile)
    /// and ends the fetch. If the cursor is still where the fetch started, the server had
    /// nothing right after it: rather than stall the conversation forever, the gap is skipped
    /// and reported. (A cursor moved by pushes during the fetch is progress: the next fetch
    /// starts further on.)
    pub(crate) fn finish_fetch(
        &mut self,
        conversation: &ConversationId,
        mut page: Vec<Message>,
    ) -> Fetched {
        let Some(lane) = self.lanes.get_mut(conversation) else {
            return Fetched {
                deliver: Vec::new(),
                skipped: None,
            };
        };
        let started_at = lane.fetching.take().unwrap_or(lane.cursor);
        page.sort_by_key(|m| m.seq);
        let mut deliver = Vec::new();
        for message in page {
            if message.seq != 0 && &message.conversation_id == conversation {
                lane.place(message, &mut deliver);
            }
        }
        let mut skipped = None;
        if lane.cursor == started_at && lane.behind() {
            let first = lane.cursor + 1;
            match lane.waiting.first_key_value().map(|(seq, _)| *seq) {
                Some(next) => {
                    skipped = Some((first, next - 1));
                    lane.cursor = next - 1;
                    lane.drain_contiguous(&mut deliver);
                }
                None => {
                    skipped = Some((first, lane.target));
                    lane.target = lane.cursor;
                }
            }
        }
        Fetched { deliver, skipped }
    }

    /// Ends a fetch that failed; the conversation stays behind for the next catch-up.
    pub(crate) fn abort_fetch(&mut self, conversation: &ConversationId) {
        if let Some(lane) = self.lanes.get_mut(conversation) {
            lane.fetching = None;
        }
    }

    /// Puts a cursor back after the delivered messages could not be persisted, so that they
    /// are fetched again by the next catch-up rather than lost.
    pub(crate) fn rewind(&mut self, conversation: &ConversationId, cursor: u64) {
        if let Some(lane) = self.lanes.get_mut(conversation) {
            lane.target = lane.target.max(lane.cursor);
            lane.cursor = lane.cursor.min(cursor);
            let cursor = lane.cursor;
            lane.waiting.retain(|seq, _| *seq > cursor);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use magpie_proto::message::CommandBody;
    use magpie_proto::{MessageContent, MessageId, Peer, UserId};

    fn conv(name: &str) -> ConversationId {
        ConversationId::parse(&format!("c2c:{name}:zed")).expect("conversation id")
    }

    fn msg(c: &ConversationId, seq: u64) -> Message {
        Message {
            id: MessageId(1000 + seq),
            conversation_id: c.clone(),
            seq,
            from: UserId::new("zed").expect("user"),
            to: Peer::User(UserId::new("amy").expect("user")),
            client_msg_id: format!("m{seq}"),
            content: MessageContent::text(format!("#{seq}")),
            ext: None,
            mentions: None,
            server_time: seq as i64,
        }
    }

    fn seqs(messages: &[Message]) -> Vec<u64> {
        messages.iter().map(|m| m.seq).collect()
    }

    fn delivered(offer: Offer) -> (Vec<u64>, bool) {
        match offer {
            Offer::Accepted {
                deliver,
                start_fetch,
            } => (seqs(&deliver), start_fetch),
            other => panic!("expected Accepted, got {other:?}"),
        }
    }

    #[test]
    fn in_order_messages_are_delivered_one_by_one() {
        let c = conv("amy");
        let mut s = Sequencer::new(None);
        for seq in 1..=5 {
            assert_eq!(delivered(s.offer(msg(&c, seq))), (vec![seq], false));
        }
        assert_eq!(s.cursor(&c), Some(5));
        assert_eq!(s.begin_fetch(&c), FetchPlan::UpToDate);
    }

    #[test]
    fn duplicates_are_dropped_whether_delivered_or_waiting() {
        let c = conv("amy");
        let mut s = Sequencer::new(None);
        s.offer(msg(&c, 1));
        assert_eq!(s.offer(msg(&c, 1)), Offer::Duplicate);
        assert_eq!(delivered(s.offer(msg(&c, 3))), (vec![], true));
        assert_eq!(s.offer(msg(&c, 3)), Offer::Duplicate, "waiting above a gap");
        assert_eq!(s.cursor(&c), Some(1));
    }

    #[test]
    fn a_gap_is_fetched_before_anything_above_it_is_delivered() {
        let c = conv("amy");
        let mut s = Sequencer::new(None);
        s.restore(c.clone(), 10);
        assert_eq!(delivered(s.offer(msg(&c, 13))), (vec![], true));
        assert_eq!(s.begin_fetch(&c), FetchPlan::Fetch { after: 10 });
        let page = vec![msg(&c, 11), msg(&c, 12), msg(&c, 13)];
        let fetched = s.finish_fetch(&c, page);
        assert_eq!(seqs(&fetched.deliver), vec![11, 12, 13], "13 exactly once");
        assert_eq!(fetched.skipped, None);
        assert_eq!(s.cursor(&c), Some(13));
        assert_eq!(s.begin_fetch(&c), FetchPlan::UpToDate);
    }

    #[test]
    fn pushes_during_a_fetch_are_merged_in_order_and_once() {
        let c = conv("amy");
        let mut s = Sequencer::new(None);
        s.restore(c.clone(), 10);
        assert_eq!(delivered(s.offer(msg(&c, 14))), (vec![], true));
        assert_eq!(s.begin_fetch(&c), FetchPlan::Fetch { after: 10 });
        // While the fetch is in flight: more pushes, one of them filling the next seq.
        assert_eq!(
            delivered(s.offer(msg(&c, 15))),
            (vec![], false),
            "no second fetch"
        );
        assert_eq!(delivered(s.offer(msg(&c, 11))), (vec![11], false));
        assert_eq!(s.begin_fetch(&c), FetchPlan::InFlight);
        // The page overlaps both what was delivered and what is waiting.
        let page = (11..=14).map(|q| msg(&c, q)).collect();
        let fetched = s.finish_fetch(&c, page);
        assert_eq!(seqs(&fetched.deliver), vec![12, 13, 14, 15]);
        assert_eq!(s.cursor(&c), Some(15));
        assert_eq!(s.offer(msg(&c, 14)), Offer::Duplicate);
    }

    #[test]
    fn a_page_out_of_order_is_delivered_in_order() {
        let c = conv("amy");
        let mut s = Sequencer::new(None);
        s.observe_last_seq(&c, 4);
        assert_eq!(s.begin_fetch(&c), FetchPlan::Fetch { after: 0 });
        let fetched = s.finish_fetch(&c, vec![msg(&c, 3), msg(&c, 1), msg(&c, 4), msg(&c, 2)]);
        assert_eq!(seqs(&fetched.deliver), vec![1, 2, 3, 4]);
    }

    #[test]
    fn bounded_pages_continue_until_the_target() {
        let c = conv("amy");
        let mut s = Sequencer::new(None);
        assert_eq!(s.observe_last_seq(&c, 5), (0, true));
        assert_eq!(s.begin_fetch(&c), FetchPlan::Fetch { after: 0 });
        s.finish_fetch(&c, vec![msg(&c, 1), msg(&c, 2)]);
        assert!(s.needs_fetch(&c), "3..=5 still missing");
        assert_eq!(s.begin_fetch(&c), FetchPlan::Fetch { after: 2 });
        let fetched = s.finish_fetch(&c, (3..=5).map(|q| msg(&c, q)).collect());
        assert_eq!(seqs(&fetched.deliver), vec![3, 4, 5]);
        assert_eq!(s.begin_fetch(&c), FetchPlan::UpToDate);
    }

    #[test]
    fn restart_resumes_from_the_persisted_cursor() {
        let c = conv("amy");
        let mut s = Sequencer::new(None);
        s.restore(c.clone(), 7);
        assert_eq!(s.offer(msg(&c, 7)), Offer::Duplicate);
        assert_eq!(delivered(s.offer(msg(&c, 8))), (vec![8], false));
        // restore never moves an existing lane
        s.restore(c.clone(), 2);
        assert_eq!(s.cursor(&c), Some(8));
        assert_eq!(s.observe_last_seq(&c, 8), (8, false));
        assert_eq!(s.begin_fetch(&c), FetchPlan::UpToDate);
    }

    #[test]
    fn commands_bypass_the_cursor() {
        let c = conv("amy");
        let mut s = Sequencer::new(None);
        let mut command = msg(&c, 0);
        command.content = MessageContent::Command(CommandBody {
            name: "typing".into(),
            data: serde_json::Value::Null,
        });
        assert_eq!(
            s.offer(command.clone()),
            Offer::Transient(Box::new(command))
        );
        assert_eq!(s.cursor(&c), None, "a command creates no lane");
    }

    #[test]
    fn new_conversations_start_at_the_initial_window() {
        let c = conv("amy");
        let mut s = Sequencer::new(Some(20));
        assert_eq!(s.observe_last_seq(&c, 100), (80, true));
        assert_eq!(s.begin_fetch(&c), FetchPlan::Fetch { after: 80 });

        let d = conv("bob");
        assert_eq!(s.observe_last_seq(&d, 5), (0, true), "never below zero");

        // A push in an unknown conversation keeps the window before the pushed message.
        let e = conv("cat");
        assert_eq!(delivered(s.offer(msg(&e, 50))), (vec![], true));
        assert_eq!(s.begin_fetch(&e), FetchPlan::Fetch { after: 29 });

        let mut zero = Sequencer::new(Some(0));
        assert_eq!(delivered(zero.offer(msg(&e, 50))), (vec![50], false));
    }

    #[test]
    fn without_a_window_a_new_conversation_is_pulled_from_the_start() {
        let c = conv("amy");
        let mut s = Sequencer::new(None);
        assert_eq!(delivered(s.offer(msg(&c, 3))), (vec![], true));
        assert_eq!(s.begin_fetch(&c), FetchPlan::Fetch { after: 0 });
    }

    #[test]
    fn an_aborted_fetch_can_be_retried() {
        let c = conv("amy");
        let mut s = Sequencer::new(None);
        s.offer(msg(&c, 2));
        assert_eq!(s.begin_fetch(&c), FetchPlan::Fetch { after: 0 });
        s.abort_fetch(&c);
        assert_eq!(s.begin_fetch(&c), FetchPlan::Fetch { after: 0 });
    }

    #[test]
    fn an_unfillable_gap_is_skipped_instead_of_stalling() {
        let c = conv("amy");
        let mut s = Sequencer::new(None);
        s.restore(c.clone(), 3);
        s.offer(msg(&c, 6));
        s.offer(msg(&c, 7));
        assert_eq!(s.begin_fetch(&c), FetchPlan::Fetch { after: 3 });
        let fetched = s.finish_fetch(&c, vec![]);
        assert_eq!(fetched.skipped, Some((4, 5)));
        assert_eq!(seqs(&fetched.deliver), vec![6, 7]);
        assert_eq!(s.begin_fetch(&c), FetchPlan::UpToDate);

        // A target the server cannot reach (sync said 9, the server has nothing more).
        s.observe_last_seq(&c, 9);
        assert_eq!(s.begin_fetch(&c), FetchPlan::Fetch { after: 7 });
        let fetched = s.finish_fetch(&c, vec![]);
        assert_eq!(fetched.skipped, Some((8, 9)));
        assert!(fetched.deliver.is_empty());
        assert_eq!(s.begin_fetch(&c), FetchPlan::UpToDate);
    }

    #[test]
    fn a_stale_page_after_pushes_moved_the_cursor_is_not_a_gap() {
        let c = conv("amy");
        let mut s = Sequencer::new(None);
        s.restore(c.clone(), 10);
        s.offer(msg(&c, 23));
        assert_eq!(s.begin_fetch(&c), FetchPlan::Fetch { after: 10 });
        for seq in 11..=21 {
            s.offer(msg(&c, seq));
        }
        // The page only holds what the pushes already delivered.
        let fetched = s.finish_fetch(&c, (11..=15).map(|q| msg(&c, q)).collect());
        assert_eq!(fetched.skipped, None, "22 must not be skipped");
        assert!(fetched.deliver.is_empty());
        assert_eq!(s.begin_fetch(&c), FetchPlan::Fetch { after: 21 });
        let fetched = s.finish_fetch(&c, vec![msg(&c, 22), msg(&c, 23)]);
        assert_eq!(seqs(&fetched.deliver), vec![22, 23]);
    }

    #[test]
    fn a_page_with_progress_is_not_treated_as_a_gap() {
        let c = conv("amy");
        let mut s = Sequencer::new(None);
        s.observe_last_seq(&c, 4);
        s.begin_fetch(&c);
        let fetched = s.finish_fetch(&c, vec![msg(&c, 1), msg(&c, 2)]);
        assert_eq!(fetched.skipped, None);
        assert_eq!(s.begin_fetch(&c), FetchPlan::Fetch { after: 2 });
    }

    #[test]
    fn rewind_makes_undelivered_messages_fetchable_again() {
        let c = conv("amy");
        let mut s = Sequencer::new(None);
        s.restore(c.clone(), 4);
        assert_eq!(delivered(s.offer(msg(&c, 5))), (vec![5], false));
        s.rewind(&c, 4);
        assert_eq!(s.cursor(&c), Some(4));
        assert_eq!(s.begin_fetch(&c), FetchPlan::Fetch { after: 4 });
        let fetched = s.finish_fetch(&c, vec![msg(&c, 5)]);
        assert_eq!(seqs(&fetched.deliver), vec![5]);
    }

    #[test]
    fn conversations_are_independent() {
        let (a, b) = (conv("amy"), conv("bob"));
        let mut s = Sequencer::new(None);
        s.offer(msg(&a, 1));
        assert_eq!(delivered(s.offer(msg(&b, 2))), (vec![], true));
        assert_eq!(delivered(s.offer(msg(&a, 2))), (vec![2], false));
        assert_eq!(s.begin_fetch(&a), FetchPlan::UpToDate);
        assert_eq!(s.begin_fetch(&b), FetchPlan::Fetch { after: 0 });
    }

    /// Every interleaving of push, duplicate and page delivers each seq exactly once in order.
    #[test]
    fn randomised_sources_deliver_each_seq_once_in_order() {
        use rand::seq::SliceRandom;
        let c = conv("amy");
        for round in 0..200 {
            let mut rng = rand::rng();
            let n: u64 = 30;
            let mut events: Vec<(bool, u64)> = (1..=n)
                .flat_map(|q| [(false, q), (false, q)]) // every push twice
                .collect();
            events.shuffle(&mut rng);
            let mut s = Sequencer::new(None);
            let mut out = Vec::new();
            let mut in_flight: Option<u64> = None;
            for (i, (_, seq)) in events.into_iter().enumerate() {
                if let Offer::Accepted { deliver, .. } = s.offer(msg(&c, seq)) {
                    out.extend(deliver);
                }
                if i % 7 == 0 {
                    match in_flight.take() {
                        Some(after) => {
                            let page = ((after + 1)..=(after + 5).min(n))
                                .map(|q| msg(&c, q))
                                .collect();
                            out.extend(s.finish_fetch(&c, page).deliver);
                        }
                        None => {
                            if let FetchPlan::Fetch { after } = s.begin_fetch(&c) {
                                in_flight = Some(after);
                            }
                        }
                    }
                }
            }
            if in_flight.is_some() {
                s.abort_fetch(&c);
            }
            while let FetchPlan::Fetch { after } = s.begin_fetch(&c) {
                let page = ((after + 1)..=n).map(|q| msg(&c, q)).collect();
                out.extend(s.finish_fetch(&c, page).deliver);
            }
            assert_eq!(seqs(&out), (1..=n).collect::<Vec<_>>(), "round {round}");
        }
    }
}
