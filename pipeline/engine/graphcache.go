package engine

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"ortalign/internal/atomicfile"
	"ortalign/internal/srcdigest"
	"ortalign/onnx"
	"ortalign/onnx/autodiff"
	"ortalign/onnx/onnxpb"
	"ortalign/onnx/ort"
	"ortalign/pipeline/lm"
)

// Training-graph cache.
//
// Building a training graph (loss head, ties, autodiff.Build with its shape probing)
// takes seconds on a 135M-parameter model and grows with the model, and a resumed run
// would pay it again for the very same graph. So the engine keeps the graph it built in
// the run's directory (TrainConfig.GraphCache) and reuses it when the key matches: a
// SHA-256 over the model that is differentiated — its graph and every initializer's
// bytes, since ties compare values and the adapter's initial weights are in it — every
// option that shapes the graph, and the code that builds it (graphBuilder): the ONNX
// Runtime version and digests of autodiff's and this package's sources, so that a cache
// written by another build is never taken for the graph this one would make, with no
// version constant to bump by hand.
//
// The file holds no copy of the weights: an initializer of the training graph that is
// the model's own (a frozen weight, the base weights under LoRA) is written as a stub
// with its name, type and dims, and reading the cache points it at the model's data
// again, which the key says is byte for byte the data it was built from. What is left is
// the graph and small constants: megabytes, not the model's size, so it is one protobuf
// file (training graphs over the protobuf limit are not cached).
//
// A cache that is missing, damaged, or made for another model or other options is not
// an error: the graph is built and the cache rewritten. Each file is replaced atomically,
// and the sidecar, written last, holds the key and the model file's SHA-256, so a run
// killed between the two writes leaves a pair that does not verify.

// Files of the training-graph cache, in TrainConfig.GraphCache.
const (
	// GraphCacheModelFile is the training graph, with the model's own weights as stubs.
	GraphCacheModelFile = "training_graph.onnx"
	// GraphCacheMetaFile is the sidecar: the key, GraphCacheModelFile's SHA-256 and the
	// TrainingGraph's fields besides the model.
	GraphCacheMetaFile = "training_graph.json"
)

// GraphBuilder is the code that builds a training graph, as part of the cache key: the
// graph built for the same model and options changes with autodiff (rules, emission,
// gradient checkpointing, shape probing), with this package (loss heads, tying,
// trainable selection, the cache's own format) and with the ONNX Runtime that probes
// the shapes. Each is named by a digest of its code or its version, so none needs a
// constant bumped by hand.
type GraphBuilder struct {
	// ORT is the version of the ONNX Runtime library (ort.Version).
	ORT string `json:"onnxruntime"`
	// Autodiff is autodiff.RulesDigest.
	Autodiff string `json:"autodiff"`
	// Pipeline is the digest of this package's Go sources and lm's (the heads, tying
	// and trainable selection); the objective's own sources count in the key through
	// SourceDigester.
	Pipeline string `json:"pipeline"`
}

// pipelineSources are this package's files as built; the cache key digests its non-test
// Go sources (with lm's).
//
//go:embed *.go
var pipelineSources embed.FS

// pipelineDigest is srcdigest.Of(pipelineSources), computed once.
var pipelineDigest = sync.OnceValues(func() (string, error) {
	own, err := srcdigest.Of(pipelineSources)
	if err != nil {
		return "", err
	}
	heads, err := lm.SourceDigest()
	if err != nil {
		return "", err
	}
	return srcdigest.Combine(own, heads), nil
})

// SourceDigester is implemented by objectives whose package's code writes their loss
// head: the digest of those sources is part of the training-graph cache key, so that a
// change to the head is never answered with a graph cached before it.
type SourceDigester interface {
	SourceDigest() (string, error)
}

// CurrentGraphBuilder returns this build's graphBuilder, loading ONNX Runtime when it is
// not loaded yet. Tests replace it to stand for another build.
var CurrentGraphBuilder = func() (GraphBuilder, error) {
	v, err := ort.Version()
	if err != nil {
		return GraphBuilder{}, err
	}
	p, err := pipelineDigest()
	if err != nil {
		return GraphBuilder{}, err
	}
	return GraphBuilder{ORT: v, Autodiff: autodiff.RulesDigest(), Pipeline: p}, nil
}

// GraphCacheMeta is GraphCacheMetaFile.
type GraphCacheMeta struct {
	Key string `json:"key"`
	// Builder is the code the graph was built by (in the key; written for readers).
	Builder     GraphBuilder `json:"builder"`
	ModelSHA256 string       `json:"model_sha256"` // of GraphCacheModelFile's bytes
	ModelSize   int64        `json:"model_size"`
	// Shared are the initializers written as stubs, whose data is the model's own.
	Shared       []string          `json:"shared_initializers"`
	Trainable    []string          `json:"trainable"`
	Ties         []lm.Tie          `json:"ties"`
	Outputs      []string          `json:"outputs"`
	Grads        map[string]string `json:"grads"`
	Manifest     autodiff.Manifest `json:"manifest"`
	Checkpointed []string          `json:"checkpointed"`
	Notices      []string          `json:"notices"`
}

// cachedTrainingGraph is BuildTrainingGraph through the cache in dir ("" = none): the
// cached graph when its key matches (reused is then the file it was read from), else a
// new one, which is then cached. A cache that cannot be written is not an error (the run
// needs only the graph): a notice says so.
func cachedTrainingGraph[T any](dir string, m *onnx.Model, obj Objective[T], c GraphConfig, ad Adapter) (g *TrainingGraph, reused string, err error) {
	if dir == "" {
		g, err := BuildTrainingGraph(m, obj, c)
		return g, "", err
	}
	builder, kerr := CurrentGraphBuilder()
	var key string
	if kerr == nil {
		key, kerr = graphCacheKey(m, obj, c, ad, builder)
	}
	if kerr == nil {
		if g, ok := readGraphCache(dir, key, m); ok {
			return g, filepath.Join(dir, GraphCacheModelFile), nil
		}
	}
	if g, err = BuildTrainingGraph(m, obj, c); err != nil {
		return nil, "", err
	}
	if kerr == nil {
		kerr = writeGraphCache(dir, key, builder, g, m)
	}
	if kerr != nil {
		g.Notices = append(slices.Clip(g.Notices), fmt.Sprintf("training graph not cached in %s: %v", dir, kerr))
	}
	return g, "", nil
}

// graphCacheKey is the cache key of the training graph of m for obj with c and the
// adapter ad (m being ad's adapted model), built by b: SHA-256 over the builder, the
// options and the model, in hex.
func graphCacheKey[T any](m *onnx.Model, obj Objective[T], c GraphConfig, ad Adapter, b GraphBuilder) (string, error) {
	opts := struct {
		Builder        GraphBuilder      `json:"builder"`
		ObjectiveType  string            `json:"objective_type"`
		ObjectiveCode  string            `json:"objective_code"` // SourceDigester's digest
		Objective      string            `json:"objective"`
		Settings       map[string]string `json:"settings"`
		ObjectiveValue string            `json:"objective_value"`
		Outputs        []string          `json:"outputs"`
		Freeze         *string           `json:"freeze"` // nil: none; "" would match everything
		Tie            bool              `json:"tie_transposed_copies"`
		Checkpointing  bool              `json:"gradient_checkpointing"`
		Trainable      []string          `json:"trainable"` // null: TrainableNames' choice
		Adapter        string            `json:"adapter"`
		AdapterOptions map[string]string `json:"adapter_settings"`
	}{
		Builder: b, ObjectiveType: fmt.Sprintf("%T", obj), Objective: obj.Name(),
		Settings: obj.Settings(), Outputs: obj.Outputs(),
		Tie: c.TieTransposedCopies, Checkpointing: c.GradientCheckpointing, Trainable: c.Trainable,
	}
	if d, ok := any(obj).(SourceDigester); ok {
		code, err := d.SourceDigest()
		if err != nil {
			return "", err
		}
		opts.ObjectiveCode = code
	}
	// Settings are meant to hold everything that decides the loss; the objective's own
	// fields are added in case one shapes the graph without being a setting.
	if b, err := json.Marshal(obj); err == nil {
		opts.ObjectiveValue = string(b)
	}
	if c.Freeze != nil {
		s := c.Freeze.String()
		opts.Freeze = &s
	}
	if ad != nil {
		opts.Adapter, opts.AdapterOptions = ad.Name(), ad.Settings()
	}
	j, err := json.Marshal(opts)
	if err != nil {
		return "", fmt.Errorf("cache key: %w", err)
	}
	h := sha256.New()
	writeLenBytes(h, j)
	if err := hashModel(h, m); err != nil {
		return "", fmt.Errorf("cache key: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// writeLenBytes writes b to h after its length, so that consecutive fields cannot be
// confused with each other.
func writeLenBytes(h hash.Hash, b []byte) {
	var n [binary.MaxVarintLen64]byte
	h.Write(n[:binary.PutUvarint(n[:], uint64(len(b)))])
	h.Write(b)
}

// hashModel writes m to h: the model and graph without initializers, then every
// initializer without its raw data, then that data. The parts are marshalled from
// shallow copies, so the weights are read once, by the hash, and never copied.
func hashModel(h hash.Hash, m *onnx.Model) error {
	p := m.Proto()
	g := p.GetGraph()
	if g == nil {
		return errors.New("model has no graph")
	}
	mo := proto.MarshalOptions{Deterministic: true}
	for _, part := range []proto.Message{without(p, "graph"), without(g, "initializer")} {
		b, err := mo.Marshal(part)
		if err != nil {
			return err
		}
		writeLenBytes(h, b)
	}
	inits := g.GetInitializer()
	for _, t := range inits {
		b, err := mo.Marshal(without(t, "raw_data"))
		if err != nil {
			return fmt.Errorf("initializer %q: %w", t.GetName(), err)
		}
		writeLenBytes(h, b)
	}
	// The weights are most of the work (650 MB on a 135M model): hashed in parallel, one
	// digest per initializer, the digests then in order.
	sums := make([][sha256.Size]byte, len(inits))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(inits)) {
		wg.Go(func() {
			for i := range next {
				sums[i] = sha256.Sum256(inits[i].GetRawData())
			}
		})
	}
	for i := range inits {
		next <- i
	}
	close(next)
	wg.Wait()
	for i, t := range inits {
		var n [binary.MaxVarintLen64]byte
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(t.GetRawData())))])
		h.Write(sums[i][:])
	}
	return nil
}

// without returns a shallow copy of msg without the field named skip: the other fields
// share msg's values (to be read, never changed).
func without(msg proto.Message, skip protoreflect.Name) proto.Message {
	src := msg.ProtoReflect()
	dst := src.New()
	src.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Name() != skip {
			dst.Set(fd, v)
		}
		return true
	})
	if u := src.GetUnknown(); len(u) > 0 {
		dst.SetUnknown(u)
	}
	return dst.Interface()
}

// readGraphCache returns the cached training graph of dir when its key is key and both
// files verify, its stubs pointing at src's data again; false for anything else.
func readGraphCache(dir, key string, src *onnx.Model) (*TrainingGraph, bool) {
	b, err := os.ReadFile(filepath.Join(dir, GraphCacheMetaFile))
	if err != nil {
		return nil, false
	}
	var c GraphCacheMeta
	if json.Unmarshal(b, &c) != nil || c.Key != key {
		return nil, false
	}
	path := filepath.Join(dir, GraphCacheModelFile)
	if st, err := os.Stat(path); err != nil || st.Size() != c.ModelSize {
		return nil, false
	}
	if b, err = os.ReadFile(path); err != nil {
		return nil, false
	}
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != c.ModelSHA256 {
		return nil, false
	}
	m, err := onnx.LoadBytes(b)
	if err != nil || !attachShared(m, src, c.Shared) {
		return nil, false
	}
	res := &autodiff.Result{Model: m, Grads: c.Grads, Manifest: c.Manifest, Checkpointed: c.Checkpointed, Notices: c.Notices}
	return &TrainingGraph{Result: res, Trainable: c.Trainable, Ties: c.Ties, Outputs: c.Outputs}, true
}

// writeGraphCache caches g, the training graph of src built by builder, under key in dir.
func writeGraphCache(dir, key string, builder GraphBuilder, g *TrainingGraph, src *onnx.Model) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, shared, err := marshalStubbed(g.Model, src)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(b)
	meta, err := json.MarshalIndent(GraphCacheMeta{
		Key: key, Builder: builder, ModelSHA256: hex.EncodeToString(sum[:]), ModelSize: int64(len(b)),
		Shared: shared, Trainable: g.Trainable, Ties: g.Ties, Outputs: g.Outputs,
		Grads: g.Grads, Manifest: g.Manifest, Checkpointed: g.Checkpointed, Notices: g.Notices,
	}, "", "  ")
	if err != nil {
		return err
	}
	// The model first: until the sidecar naming its hash replaces the old one, the pair
	// does not verify and is rebuilt.
	if err := writeFileAtomic(filepath.Join(dir, GraphCacheModelFile), b); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, GraphCacheMetaFile), append(meta, '\n'))
}

// writeFileAtomic replaces path with b (internal/atomicfile).
func writeFileAtomic(path string, b []byte) error {
	f, err := atomicfile.Create(path)
	if err != nil {
		return err
	}
	defer f.Abort()
	if _, err := f.Write(b); err != nil {
		return err
	}
	return f.Commit()
}

// marshalStubbed serializes m with its initializers that are src's own — same name,
// fields and raw data, of at least onnx.DefaultSizeThreshold bytes — as stubs holding
// only name, type and dims; shared names them. m is left as it was.
func marshalStubbed(m, src *onnx.Model) (b []byte, shared []string, err error) {
	own := map[string]*onnxpb.TensorProto{}
	for _, t := range src.Graph().GetInitializer() {
		own[t.GetName()] = t
	}
	g := m.Graph()
	orig := g.Initializer
	inits := slices.Clone(orig)
	for i, t := range inits {
		s := own[t.GetName()]
		if s == nil || len(t.GetRawData()) < onnx.DefaultSizeThreshold || !sameTensor(t, s) {
			continue
		}
		inits[i] = &onnxpb.TensorProto{Name: t.Name, DataType: t.DataType, Dims: t.Dims}
		shared = append(shared, t.GetName())
	}
	// The stubs stand in only while the graph is marshalled (the engine is not running
	// yet, so nothing else reads it).
	g.Initializer = inits
	defer func() { g.Initializer = orig }()
	if b, err = m.Marshal(); err != nil {
		return nil, nil, err
	}
	return b, shared, nil
}

// sameTensor reports whether a and b hold the same fields and raw data.
func sameTensor(a, b *onnxpb.TensorProto) bool {
	x, y := a.GetRawData(), b.GetRawData()
	if len(x) != len(y) {
		return false
	}
	// Clones share their raw data, so the comparison of the bytes is rarely needed.
	if len(x) > 0 && &x[0] != &y[0] && !bytes.Equal(x, y) {
		return false
	}
	return proto.Equal(without(a, "raw_data"), without(b, "raw_data"))
}

// attachShared replaces m's stubs named by shared with copies of src's initializers that
// share their data, as BuildTrainingGraph's clone of src does. It reports false when a
// stub is missing or does not match src's initializer.
func attachShared(m, src *onnx.Model, shared []string) bool {
	want := make(map[string]bool, len(shared))
	for _, name := range shared {
		want[name] = true
	}
	own := map[string]*onnxpb.TensorProto{}
	for _, t := range src.Graph().GetInitializer() {
		if want[t.GetName()] {
			own[t.GetName()] = t
		}
	}
	n := 0
	inits := m.Graph().GetInitializer()
	for i, t := range inits {
		if !want[t.GetName()] {
			continue
		}
		s := own[t.GetName()]
		if s == nil || t.RawData != nil || t.GetDataType() != s.GetDataType() || !slices.Equal(t.GetDims(), s.GetDims()) {
			return false
		}
		c := proto.Clone(without(s, "raw_data")).(*onnxpb.TensorProto)
		c.RawData = s.RawData
		inits[i] = c
		n++
	}
	return n == len(want) && len(want) == len(shared)
}
