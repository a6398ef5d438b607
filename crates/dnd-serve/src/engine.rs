//! The one thread that computes: it owns the base model, the generator and the resident adapters, and
//! takes jobs from a bounded queue, so that requests share one copy of the model and a full queue is
//! answered at once (503) instead of piling up. Completions waiting for the same adapter are decoded
//! together as one batch (one forward pass per token for all of them); text streams back token by
//! token through a channel per request.

use crate::adapters::{AdapterMeta, AdapterStore};
use crate::error::{ApiError, ApiResult};
use dnd_llm::score::{generate_batch, Sampling};
use dnd_llm::{ChatMessage, Llm, Lora};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Prompts -> adapter: the generator, behind a function so the server does not depend on how it was
/// composed (dnd serve passes `DragAndDrop::generate`).
pub type AdapterFn = Box<dyn Fn(&[&str]) -> Result<Lora, String> + Send>;

/// What the engine computes with.
pub struct Backend {
    pub llm: Llm,
    /// How adapters name their base (`base_model` in their metadata and PEFT config): a portable name,
    /// not a path on the server.
    pub base_model: String,
    /// The generator and the sha256 of its files, if the server has one.
    pub generator: Option<(AdapterFn, String)>,
}

/// The prompt of a completion.
pub enum Input {
    Text(String),
    Chat(Vec<ChatMessage>),
}

pub struct Completion {
    /// An adapter id, or none for the base model.
    pub adapter: Option<String>,
    pub input: Input,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub sampling: Sampling,
}

/// What a completion streams back.
#[derive(Debug)]
pub enum Event {
    Text(String),
    Done {
        finish_reason: &'static str,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Error(ApiError),
}

enum Job {
    Complete(Completion, mpsc::UnboundedSender<Event>),
    Create(Vec<String>, oneshot::Sender<ApiResult<AdapterMeta>>),
}

/// The handle request handlers hold.
#[derive(Clone)]
pub struct Engine {
    jobs: mpsc::Sender<Job>,
}

impl Engine {
    /// Start the compute thread with room for `max_queue` waiting jobs, `max_resident` adapters in
    /// memory and batches of `max_batch` completions.
    pub fn start(backend: Backend, store: Arc<AdapterStore>, limits: &crate::Limits) -> Self {
        let (queue, resident) = (limits.max_queue, limits.max_resident);
        let (tx, rx) = mpsc::channel(queue.max(1));
        let worker = Worker {
            backend,
            store,
            resident: Vec::new(),
            max_resident: resident.max(1),
            max_batch: limits.max_batch.max(1),
        };
        std::thread::Builder::new()
            .name("dnd-engine".into())
            .spawn(move || worker.run(rx))
            .expect("spawning the engine thread");
        Self { jobs: tx }
    }

    /// Queue a completion; its text arrives on the returned receiver.
    pub fn complete(&self, c: Completion) -> ApiResult<mpsc::UnboundedReceiver<Event>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.submit(Job::Complete(c, tx))?;
        Ok(rx)
    }

    /// Generate (or find) the adapter of `prompts`.
    pub async fn create(&self, prompts: Vec<String>) -> ApiResult<AdapterMeta> {
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Create(prompts, tx))?;
        rx.await
            .map_err(|_| ApiError::internal("the engine stopped"))?
    }

    fn submit(&self, job: Job) -> ApiResult<()> {
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ApiError::busy(format!(
                "server busy: {} jobs are queued; retry later",
                self.jobs.max_capacity()
            )),
            mpsc::error::TrySendError::Closed(_) => ApiError::internal("the engine stopped"),
        })
    }
}

struct Worker {
    backend: Backend,
    store: Arc<AdapterStore>,
    /// Most recently used first.
    resident: Vec<(String, Arc<Lora>)>,
    max_resident: usize,
    max_batch: usize,
}

impl Worker {
    /// Jobs in arrival order, except that every completion already waiting for the same adapter as
    /// the one at the front joins its batch (up to `max_batch`).
    fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        let mut pending: VecDeque<Job> = VecDeque::new();
        loop {
            let job = match pending.pop_front() {
                Some(j) => j,
                None => match jobs.blocking_recv() {
                    Some(j) => j,
                    None => break,
                },
            };
            match job {
                Job::Create(prompts, tx) => {
                    let _ = tx.send(self.create(prompts));
                }
                Job::Complete(c, tx) => {
                    while let Ok(j) = jobs.try_recv() {
                        pending.push_back(j);
                    }
                    let mut batch = vec![(c, tx)];
                    let mut rest = VecDeque::new();
                    for j in pending.drain(..) {
                        match j {
                            Job::Complete(c, tx)
                                if c.adapter == batch[0].0.adapter
                                    && batch.len() < self.max_batch =>
                            {
                                batch.push((c, tx))
                            }
                            other => rest.push_back(other),
                        }
                    }
                    pending = rest;
                    self.complete_batch(batch);
                }
            }
        }
    }

    /// The adapter `id`, loaded from the store unless resident; the least recently used is evicted.
    fn adapter(&mut self, id: &str) -> ApiResult<Arc<Lora>> {
        if let Some(i) = self.resident.iter().position(|(k, _)| k == id) {
            let hit = self.resident.remove(i);
            self.resident.insert(0, hit.clone());
            return Ok(hit.1);
        }
        let dir = self.store.path(id)?;
        let m = &self.backend.llm.model;
        let lora = dnd_llm::peft::load(&dir, m.config(), m.dtype())
            .map_err(|e| ApiError::internal(format!("loading adapter {id}: {e}")))?;
        self.resident.insert(0, (id.to_string(), Arc::new(lora)));
        self.resident.truncate(self.max_resident);
        Ok(self.resident[0].1.clone())
    }

    /// The prompt's token ids, checked against the model's context.
    fn encode(&self, c: &Completion) -> ApiResult<Vec<u32>> {
        let llm = &self.backend.llm;
        let ids = match &c.input {
            Input::Text(t) => llm.tokenizer.encode(t, true),
            Input::Chat(m) => llm.tokenizer.encode_chat(m, true),
        }
        .map_err(|e| ApiError::bad_request(format!("prompt: {e}")))?;
        let context = llm.model.config().max_position_embeddings;
        if ids.is_empty() || ids.len() + c.max_tokens > context {
            return Err(ApiError::bad_request(format!(
                "the prompt is {} tokens and max_tokens {}: together they must be between 1 and the \
                 model's context of {context}",
                ids.len(),
                c.max_tokens
            )));
        }
        Ok(ids)
    }

    /// Completions for one adapter, decoded as one batch, each streamed as it grows.
    fn complete_batch(&mut self, batch: Vec<(Completion, mpsc::UnboundedSender<Event>)>) {
        let adapter = batch[0].0.adapter.clone();
        let lora = match adapter.as_deref().map(|id| self.adapter(id)).transpose() {
            Ok(l) => l,
            Err(e) => {
                for (_, tx) in &batch {
                    let _ = tx.send(Event::Error(e.clone()));
                }
                return;
            }
        };
        let mut seqs = Vec::new();
        for (c, tx) in batch {
            match self.encode(&c) {
                Ok(ids) => seqs.push((c, ids, tx)),
                Err(e) => {
                    let _ = tx.send(Event::Error(e));
                }
            }
        }
        if seqs.is_empty() {
            return;
        }
        let llm = &self.backend.llm;
        let tok = &llm.tokenizer;
        let streams: Vec<TextStream<'_>> = seqs
            .iter()
            .map(|(c, _, tx)| TextStream::new(tx, &c.stop))
            .collect();
        let prompts: Vec<Vec<u32>> = seqs.iter().map(|s| s.1.clone()).collect();
        let max_new = seqs.iter().map(|s| s.0.max_tokens).max().unwrap_or(0);
        let sampling: Vec<Sampling> = seqs.iter().map(|s| s.0.sampling).collect();
        let out = generate_batch(
            &llm.model,
            lora.as_deref(),
            &prompts,
            &sampling,
            max_new,
            tok.eos_ids(),
            &|i, out| streams[i].step(tok, out) || out.len() >= seqs[i].0.max_tokens,
        );
        let outs = match out {
            Ok(o) => o,
            Err(e) => {
                for (_, _, tx) in &seqs {
                    let _ = tx.send(Event::Error(ApiError::internal(e.to_string())));
                }
                return;
            }
        };
        for (((_, ids, tx), stream), out) in seqs.iter().zip(&streams).zip(&outs) {
            let ended_by_eos = out.last().is_some_and(|t| tok.eos_ids().contains(t));
            let finish_reason = if stream.stopped() || ended_by_eos {
                "stop"
            } else {
                "length"
            };
            stream.flush(tok, out);
            let _ = tx.send(Event::Done {
                finish_reason,
                prompt_tokens: ids.len(),
                completion_tokens: out.len(),
            });
        }
    }

    fn create(&mut self, prompts: Vec<String>) -> ApiResult<AdapterMeta> {
        let Some((generate, hash)) = &self.backend.generator else {
            return Err(ApiError::bad_request(
                "this server has no generator (start it with --generator DIR)",
            ));
        };
        let id = AdapterStore::id_for(hash, &prompts);
        if let Ok(meta) = self.store.meta(&id) {
            return Ok(meta);
        }
        let texts: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let lora = generate(&texts).map_err(ApiError::internal)?;
        let meta = AdapterMeta {
            id,
            object: "adapter".into(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            prompts: prompts.len(),
            base_model: self.backend.base_model.clone(),
            generator: hash.clone(),
        };
        self.store.write(&lora, &meta)?;
        Ok(meta)
    }
}

/// Sends the text of the generated ids as it grows, holding back what may still change: a trailing
/// incomplete UTF-8 character, or a tail that could be the start of a stop string. Ends the generation
/// at a stop string (not sent) or when the client has gone.
struct TextStream<'a> {
    tx: &'a mpsc::UnboundedSender<Event>,
    stop: &'a [String],
    sent: RefCell<usize>,
    stopped: RefCell<bool>,
}

impl<'a> TextStream<'a> {
    fn new(tx: &'a mpsc::UnboundedSender<Event>, stop: &'a [String]) -> Self {
        Self {
            tx,
            stop,
            sent: RefCell::new(0),
            stopped: RefCell::new(false),
        }
    }

    fn stopped(&self) -> bool {
        *self.stopped.borrow()
    }

    /// After each token: send what is settled; true ends the generation.
    fn step(&self, tok: &dnd_llm::Tokenizer, ids: &[u32]) -> bool {
        if self.tx.is_closed() {
            return true;
        }
        let Ok(text) = tok.decode(ids, true) else {
            return false;
        };
        if let Some(end) = self.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
            self.send_upto(&text, end);
            *self.stopped.borrow_mut() = true;
            return true;
        }
        self.send_upto(&text, self.settled(&text));
        false
    }

    /// Send the rest, unless a stop string ended the text.
    fn flush(&self, tok: &dnd_llm::Tokenizer, ids: &[u32]) {
        if !self.stopped() {
            if let Ok(text) = tok.decode(ids, true) {
                self.send_upto(&text, text.len());
            }
        }
    }

    /// How much of `text` can no longer change.
    fn settled(&self, text: &str) -> usize {
        let mut end = text.trim_end_matches('\u{FFFD}').len();
        for s in self.stop {
            for k in (1..s.len()).rev() {
                if s.is_char_boundary(k) && text[..end].ends_with(&s[..k]) {
                    end = end.min(text[..end].len() - k);
                    break;
                }
            }
        }
        end
    }

    fn send_upto(&self, text: &str, end: usize) {
        let mut sent = self.sent.borrow_mut();
        if end > *sent && text.is_char_boundary(end) && text.is_char_boundary(*sent) {
            let _ = self.tx.send(Event::Text(text[*sent..end].to_string()));
            *sent = end;
        }
    }
}
