//! Test-only: an in-memory MDS and chunk daemons speaking weft.proto over
//! loopback gRPC, small enough to read, so the client's read and write paths
//! (`Weft`) can be tested without FUSE and without the real daemons.
//!
//! The mock MDS knows one directory (the root), regular files, sizes and the
//! chunk map; the mock chunk daemons store bytes per chunk id, forward writes
//! and truncates down the `chain`, and can be told to fail.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use weft_proto::chunk_client::ChunkClient;
use weft_proto::chunk_server::{Chunk, ChunkServer};
use weft_proto::meta_reply::Result as R;
use weft_proto::meta_request::Op;
use weft_proto::meta_server::{Meta, MetaServer};
use weft_proto::*;

struct MdsFile {
    attr: Attr,
    chunks: BTreeMap<u64, u64>,
}

#[derive(Default)]
struct MdsState {
    names: HashMap<Vec<u8>, u64>,
    files: HashMap<u64, MdsFile>,
    next_ino: u64,
    next_chunk: u64,
}

pub struct MockMds {
    chunk_size: u64,
    replicas: Vec<String>,
    state: Mutex<MdsState>,
    pub commits: AtomicU64,
    pub allocs: AtomicU64,
}

fn reply(r: R) -> Result<Response<MetaReply>, Status> {
    Ok(Response::new(MetaReply {
        errno: 0,
        result: Some(r),
        parent_attr: None,
    }))
}

fn errno(e: i32) -> Result<Response<MetaReply>, Status> {
    Ok(Response::new(MetaReply {
        errno: e,
        result: None,
        parent_attr: None,
    }))
}

struct MdsSvc(Arc<MockMds>);

impl std::ops::Deref for MdsSvc {
    type Target = MockMds;
    fn deref(&self) -> &MockMds {
        &self.0
    }
}

struct ChunkSvc(Arc<MockChunkd>);

impl std::ops::Deref for ChunkSvc {
    type Target = MockChunkd;
    fn deref(&self) -> &MockChunkd {
        &self.0
    }
}

#[tonic::async_trait]
impl Meta for MdsSvc {
    async fn call(&self, req: Request<MetaRequest>) -> Result<Response<MetaReply>, Status> {
        let op = req
            .into_inner()
            .op
            .ok_or_else(|| Status::invalid_argument("no op"))?;
        let cs = self.chunk_size;
        let mut st = self.state.lock();
        match op {
            Op::Getattr(g) if g.ino == 1 => reply(R::Attr(Attr {
                ino: 1,
                kind: FileKind::Directory as i32,
                mode: 0o755,
                nlink: 2,
                ..Default::default()
            })),
            Op::Getattr(g) => match st.files.get(&g.ino) {
                Some(f) => reply(R::Attr(f.attr)),
                None => errno(libc::ENOENT),
            },
            Op::Statfs(_) => reply(R::Statfs(StatFs {
                total_bytes: 1 << 30,
                free_bytes: 1 << 29,
                files: st.files.len() as u64,
                chunk_size: cs,
                block_size: 4096,
                name_max: 255,
            })),
            Op::Create(c) => {
                if st.names.contains_key(&c.name) {
                    return errno(libc::EEXIST);
                }
                st.next_ino += 1;
                let ino = st.next_ino + 1;
                let attr = Attr {
                    ino,
                    kind: FileKind::Regular as i32,
                    mode: c.mode & 0o7777,
                    nlink: 1,
                    ..Default::default()
                };
                st.names.insert(c.name, ino);
                st.files.insert(
                    ino,
                    MdsFile {
                        attr,
                        chunks: BTreeMap::new(),
                    },
                );
                reply(R::Attr(attr))
            }
            Op::Open(o) => {
                let Some(f) = st.files.get_mut(&o.ino) else {
                    return errno(libc::ENOENT);
                };
                if o.flags as i32 & libc::O_TRUNC != 0 {
                    f.attr.size = 0;
                    f.chunks.clear();
                }
                reply(R::Attr(f.attr))
            }
            Op::Release(_) => reply(R::Empty(Empty {})),
            Op::Setattr(s) => {
                let Some(f) = st.files.get_mut(&s.ino) else {
                    return errno(libc::ENOENT);
                };
                if let Some(size) = s.size {
                    f.attr.size = size;
                    f.chunks.retain(|i, _| i * cs < size);
                }
                if let Some(m) = s.mode {
                    f.attr.mode = m;
                }
                reply(R::Attr(f.attr))
            }
            Op::AllocChunk(a) => {
                self.allocs.fetch_add(1, Ordering::Relaxed);
                st.next_chunk += 1;
                let fresh = st.next_chunk;
                let Some(f) = st.files.get_mut(&a.ino) else {
                    return errno(libc::ENOENT);
                };
                let id = *f.chunks.entry(a.index).or_insert(fresh);
                reply(R::ChunkWrite(ChunkWrite {
                    chunk: Some(self.loc(a.index, id)),
                    chunk_size: cs,
                    lease_epoch: 1,
                    lease_expires_ms: 0,
                }))
            }
            Op::CommitWrite(c) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                let Some(f) = st.files.get_mut(&c.ino) else {
                    return errno(libc::ENOENT);
                };
                f.attr.size = f.attr.size.max(c.end);
                reply(R::Attr(f.attr))
            }
            Op::GetChunks(g) => {
                let Some(f) = st.files.get(&g.ino) else {
                    return errno(libc::ENOENT);
                };
                let chunks = (g.first_index..g.first_index + u64::from(g.count))
                    .map(|i| match f.chunks.get(&i) {
                        Some(id) => self.loc(i, *id),
                        None => ChunkLoc {
                            index: i,
                            ..Default::default()
                        },
                    })
                    .collect();
                reply(R::Chunks(ChunkList {
                    chunk_size: cs,
                    file_size: f.attr.size,
                    chunks,
                }))
            }
            _ => errno(libc::ENOSYS),
        }
    }
}

impl MockMds {
    fn loc(&self, index: u64, chunk_id: u64) -> ChunkLoc {
        ChunkLoc {
            index,
            chunk_id,
            version: 1,
            replicas: self
                .replicas
                .iter()
                .enumerate()
                .map(|(i, a)| Replica {
                    chunkd_id: i as u64 + 1,
                    addr: a.clone(),
                })
                .collect(),
        }
    }
}

#[derive(Default)]
pub struct MockChunkd {
    pub data: Mutex<HashMap<u64, Vec<u8>>>,
    pub fail_writes: Mutex<Option<tonic::Code>>,
    /// Fail this many more writes with UNAVAILABLE (a pipeline member down).
    pub fail_next_writes: AtomicU64,
    pub fail_reads: AtomicBool,
    pub reads: AtomicU64,
    pub syncs: AtomicU64,
}

async fn next_hop(
    chain: &[String],
) -> Result<Option<(ChunkClient<tonic::transport::Channel>, Vec<String>)>, Status> {
    let Some((head, rest)) = chain.split_first() else {
        return Ok(None);
    };
    let c = ChunkClient::connect(format!("http://{head}"))
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    Ok(Some((c, rest.to_vec())))
}

#[tonic::async_trait]
impl Chunk for ChunkSvc {
    async fn write(&self, req: Request<WriteReq>) -> Result<Response<WriteReply>, Status> {
        let w = req.into_inner();
        if let Some(code) = *self.fail_writes.lock() {
            return Err(Status::new(code, "told to fail"));
        }
        let fail_next =
            self.fail_next_writes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if fail_next.is_ok() {
            return Err(Status::unavailable("downstream replica did not answer"));
        }
        {
            let mut data = self.data.lock();
            let d = data.entry(w.chunk_id).or_default();
            let end = w.offset as usize + w.data.len();
            if d.len() < end {
                d.resize(end, 0);
            }
            d[w.offset as usize..end].copy_from_slice(&w.data);
        }
        if let Some((mut c, rest)) = next_hop(&w.chain).await? {
            c.write(WriteReq { chain: rest, ..w }).await?;
        }
        Ok(Response::new(WriteReply {}))
    }

    async fn read(&self, req: Request<ReadReq>) -> Result<Response<ReadReply>, Status> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        if self.fail_reads.load(Ordering::Relaxed) {
            return Err(Status::data_loss("bad crc"));
        }
        let r = req.into_inner();
        let data = self.data.lock();
        let d = data
            .get(&r.chunk_id)
            .ok_or_else(|| Status::not_found("no chunk"))?;
        let mut out = vec![0u8; r.length as usize];
        let start = (r.offset as usize).min(d.len());
        let end = (r.offset as usize + r.length as usize).min(d.len());
        out[..end - start].copy_from_slice(&d[start..end]);
        Ok(Response::new(ReadReply { data: out.into() }))
    }

    async fn sync(&self, req: Request<SyncReq>) -> Result<Response<Empty>, Status> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        let s = req.into_inner();
        if let Some((mut c, rest)) = next_hop(&s.chain).await? {
            c.sync(SyncReq { chain: rest, ..s }).await?;
        }
        Ok(Response::new(Empty {}))
    }

    async fn truncate(&self, req: Request<TruncateReq>) -> Result<Response<Empty>, Status> {
        let t = req.into_inner();
        if let Some(d) = self.data.lock().get_mut(&t.chunk_id) {
            d.truncate(t.length as usize);
        }
        if let Some((mut c, rest)) = next_hop(&t.chain).await? {
            c.truncate(TruncateReq { chain: rest, ..t }).await?;
        }
        Ok(Response::new(Empty {}))
    }
}

pub struct MockCluster {
    pub mds_addr: String,
    pub mds: Arc<MockMds>,
    pub chunkds: Vec<Arc<MockChunkd>>,
}

/// A loopback listener. TCP_NODELAY matters: `serve_with_incoming` ignores the
/// builder's `tcp_nodelay`, and with Nagle on, small replies wait ~40 ms for
/// the client's delayed ACK.
async fn listen() -> (String, TcpIncoming) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (addr, TcpIncoming::from(l).with_nodelay(Some(true)))
}

impl MockCluster {
    /// Starts `n` chunk daemons and an MDS placing every chunk on all of them.
    pub async fn start(n: usize, chunk_size: u64) -> MockCluster {
        let mut chunkds = Vec::new();
        let mut addrs = Vec::new();
        for _ in 0..n {
            let d = Arc::new(MockChunkd::default());
            let (addr, incoming) = listen().await;
            let svc = ChunkServer::new(ChunkSvc(d.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE);
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming(incoming),
            );
            chunkds.push(d);
            addrs.push(addr);
        }
        let mds = Arc::new(MockMds {
            chunk_size,
            replicas: addrs,
            state: Mutex::new(MdsState::default()),
            commits: AtomicU64::new(0),
            allocs: AtomicU64::new(0),
        });
        let (mds_addr, incoming) = listen().await;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(MetaServer::new(MdsSvc(mds.clone())))
                .serve_with_incoming(incoming),
        );
        MockCluster {
            mds_addr,
            mds,
            chunkds,
        }
    }
}
