package onnx

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"ortalign/onnx/onnxpb"
)

// setLoadMode sets how Load reads files for the rest of the test.
func setLoadMode(t testing.TB, mmap bool, minSize int) {
	t.Helper()
	oldMmap, oldMin := mmapEnabled, aliasMin
	mmapEnabled, aliasMin = mmap, minSize
	t.Cleanup(func() { mmapEnabled, aliasMin = oldMmap, oldMin })
}

// testModelFiles lists every model file under the test data directories.
func testModelFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	for _, pattern := range []string{
		filepath.Join("testdata", "*.onnx"),
		filepath.Join("testdata", "*", "*.onnx"),
		filepath.Join("..", "testdata", "models", "*.onnx"),
	} {
		m, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	if len(files) < 5 {
		t.Fatalf("found only %d test models: %v", len(files), files)
	}
	return files
}

// unmarshalFile is what Load gave before mapping: proto.Unmarshal of the file.
func unmarshalFile(t *testing.T, path string) *onnxpb.ModelProto {
	t.Helper()
	p := &onnxpb.ModelProto{}
	if err := proto.Unmarshal(readFile(t, path), p); err != nil {
		t.Fatal(err)
	}
	return p
}

func hasRawInitializer(p *onnxpb.ModelProto) bool {
	for _, t := range p.GetGraph().GetInitializer() {
		if len(t.RawData) > 0 {
			return true
		}
	}
	return false
}

func TestLoadMappedMatchesUnmarshal(t *testing.T) {
	modes := []struct {
		name    string
		mmap    bool
		minSize int
		aliases bool // whether every model with raw initializers must alias some
	}{
		{"read", false, 64 << 10, false},
		{"mmap/alias-all", true, 1, true},
		{"mmap/alias-64B", true, 64, false},
		{"mmap/alias-4KiB", true, 4 << 10, false},
		{"mmap/default", true, 64 << 10, false},
	}
	for _, path := range testModelFiles(t) {
		want := unmarshalFile(t, path)
		var wantLoaded *Model // the plain read, external data resolved
		t.Run(path+"/plain", func(t *testing.T) {
			setLoadMode(t, false, aliasMin)
			wantLoaded = mustLoad(t, path)
		})
		if wantLoaded == nil {
			continue
		}
		for _, mode := range modes {
			t.Run(path+"/"+mode.name, func(t *testing.T) {
				setLoadMode(t, mode.mmap, mode.minSize)
				p, aliased, err := readModelAliased(path)
				if err != nil {
					t.Fatal(err)
				}
				if !proto.Equal(p, want) {
					t.Error("readModel differs from proto.Unmarshal of the file")
				}
				if !mode.mmap && aliased != 0 {
					t.Errorf("%d tensors aliased with mapping off", aliased)
				}
				if mode.aliases && hasRawInitializer(want) && aliased == 0 {
					t.Error("no initializer aliased the mapping")
				}
				m, err := Load(path)
				if err != nil {
					t.Fatal(err)
				}
				if !proto.Equal(m.Proto(), wantLoaded.Proto()) {
					t.Error("Load differs from Load without mapping")
				}
			})
		}
	}
}

// wire helpers for hand-made model bytes.

func field(b []byte, num protowire.Number, v []byte) []byte {
	return protowire.AppendBytes(protowire.AppendTag(b, num, protowire.BytesType), v)
}

func marshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func seq(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

// TestStripRawDataWireCases checks parseAliased against proto.Unmarshal on
// hand-made encodings that exercise the protobuf rules the walker follows.
func TestStripRawDataWireCases(t *testing.T) {
	opset := marshal(t, &onnxpb.OperatorSetIdProto{Domain: proto.String(""), Version: proto.Int64(17)})
	sub := &onnxpb.GraphProto{Name: proto.String("then"), Initializer: []*onnxpb.TensorProto{
		rawTensor("sub", UInt8, []int64{200}, seq(200, 3)),
	}}
	node := &onnxpb.NodeProto{OpType: proto.String("If"), Name: proto.String("if"),
		Attribute: []*onnxpb.AttributeProto{AttrGraph("then_branch", sub), AttrTensor("value", rawTensor("attr", UInt8, []int64{300}, seq(300, 9)))}}
	tensor := func(name string, fields ...[]byte) []byte {
		b := marshal(t, &onnxpb.TensorProto{Name: proto.String(name), DataType: proto.Int32(int32(UInt8))})
		for _, f := range fields {
			b = append(b, f...)
		}
		return b
	}
	raw := func(n int, seed byte) []byte { return field(nil, tensorRawDataField, seq(n, seed)) }
	unknown := protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 12345)
	graph := func(inits ...[]byte) []byte {
		b := marshal(t, &onnxpb.GraphProto{Name: proto.String("g"), Node: []*onnxpb.NodeProto{node}})
		for _, in := range inits {
			b = field(b, graphInitializerField, in)
		}
		return append(b, unknown...)
	}
	model := func(graphs ...[]byte) []byte {
		b := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 8)
		for _, g := range graphs {
			b = field(b, modelGraphField, g)
		}
		b = field(b, 8, opset)
		return append(b, unknown...)
	}
	// longPrefix encodes a length-delimited field with a needlessly long
	// (but valid) varint length, which the rewritten prefix replaces.
	longPrefix := func(num protowire.Number, v []byte) []byte {
		b := protowire.AppendTag(nil, num, protowire.BytesType)
		n := uint64(len(v))
		b = append(b, byte(n&0x7f|0x80), byte(n>>7&0x7f|0x80), byte(n>>14&0x7f|0x80), byte(n>>21&0x7f|0x80), byte(n>>28))
		return append(b, v...)
	}
	wrongType := protowire.AppendVarint(protowire.AppendTag(nil, tensorRawDataField, protowire.VarintType), 7)
	sparse := field(nil, 15, marshal(t, &onnxpb.SparseTensorProto{
		Values: rawTensor("sv", UInt8, []int64{150}, seq(150, 1)), Dims: []int64{1000},
	}))

	cases := []struct {
		name string
		b    []byte
	}{
		{"plain", model(graph(tensor("a", raw(100, 1)), tensor("b", raw(3, 2)), tensor("c", raw(0, 0)), tensor("d")))},
		{"unknown fields in tensor", model(graph(tensor("a", unknown, raw(100, 1), unknown)))},
		{"raw_data twice, large last", model(graph(tensor("a", raw(3, 1), raw(100, 2))))},
		{"raw_data twice, small last", model(graph(tensor("a", raw(100, 1), raw(3, 2))))},
		{"raw_data twice, both large", model(graph(tensor("a", raw(100, 1), raw(120, 2))))},
		{"raw_data then wrong wire type", model(graph(tensor("a", raw(100, 1), wrongType)))},
		{"raw_data with wrong wire type only", model(graph(tensor("a", wrongType)))},
		{"graph field twice", model(graph(tensor("a", raw(100, 1))), graph(tensor("b", raw(3, 1)), tensor("c", raw(90, 5))))},
		{"initializer with wrong wire type", model(append(graph(tensor("a", raw(100, 1))),
			protowire.AppendVarint(protowire.AppendTag(nil, graphInitializerField, protowire.VarintType), 1)...))},
		{"long length prefixes", append(append(protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 8),
			longPrefix(modelGraphField, append(longPrefix(graphInitializerField, tensor("a", raw(100, 1))), sparse...))...),
			field(nil, 8, opset)...)},
		{"raw_data at the very end", append(field(protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 8), 8, opset),
			field(nil, modelGraphField, field(nil, graphInitializerField, tensor("a", raw(100, 1))))...)},
		{"no graph", model()},
		{"no initializers", model(graph())},
		{"empty", nil},
	}
	for _, c := range cases {
		for _, minSize := range []int{1, 4, 64, 101, 1 << 20} {
			got, aliased, err := parseAliased(c.b, minSize)
			want, wantErr := parseModel(c.b)
			if (err == nil) != (wantErr == nil) {
				t.Errorf("%s, min %d: err = %v, want %v", c.name, minSize, err, wantErr)
				continue
			}
			if err == nil && !proto.Equal(got, want) {
				t.Errorf("%s, min %d: parseAliased differs from proto.Unmarshal", c.name, minSize)
			}
			if c.name == "plain" && minSize == 64 && aliased != 1 {
				t.Errorf("%s, min %d: %d aliased, want 1", c.name, minSize, aliased)
			}
			if c.name == "raw_data twice, small last" && minSize == 64 && aliased != 0 {
				t.Errorf("%s: %d aliased, want 0 (the small raw_data wins)", c.name, aliased)
			}
		}
	}
}

// TestParseAliasedDamagedInput checks that prefixes and random corruptions of
// real models behave exactly as with proto.Unmarshal: the same success or
// failure and, on success, the same model.
func TestParseAliasedDamagedInput(t *testing.T) {
	check := func(name string, b []byte) {
		t.Helper()
		got, _, err := parseAliased(b, 16)
		want, wantErr := parseModel(b)
		if (err == nil) != (wantErr == nil) {
			t.Fatalf("%s: err = %v, want %v", name, err, wantErr)
		}
		if err == nil && !proto.Equal(got, want) {
			t.Fatalf("%s: parseAliased differs from proto.Unmarshal", name)
		}
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for _, path := range []string{mlpPath, unknownPath, filepath.Join("..", "testdata", "models", "llama_opset17.onnx")} {
		good := readFile(t, path)
		step := max(1, len(good)/3000)
		for n := 0; n <= len(good); n += step {
			check(path+" prefix", good[:n])
		}
		for i := range 300 {
			b := bytes.Clone(good)
			for range 1 + rng.IntN(3) {
				b[rng.IntN(len(b))] = byte(rng.UintN(256))
			}
			check(fmt.Sprintf("%s corruption %d", path, i), b)
		}
	}
}

func TestLoadMappedBadFileNamesIt(t *testing.T) {
	setLoadMode(t, true, 16)
	good := readFile(t, filepath.Join("..", "testdata", "models", "gpt2_opset17.onnx"))
	// A cut inside the first large raw_data, found by the walker.
	_, raws, _, err := stripRawData(good, 1<<10)
	if err != nil || len(raws) == 0 {
		t.Fatalf("stripRawData: %d raws, %v", len(raws), err)
	}
	inRaw := -1
	for i := range good {
		if &good[i] == &raws[0].data[0] {
			inRaw = i + len(raws[0].data)/2
			break
		}
	}
	if inRaw < 0 {
		t.Fatal("the aliased raw_data is not inside the model bytes")
	}
	corrupt := bytes.Clone(good)
	corrupt[1] = 0xff // the graph's length prefix (or the first field) is now garbage
	for _, c := range []struct {
		name string
		b    []byte
	}{
		{"half.onnx", good[:len(good)/2]},
		{"in-raw.onnx", good[:inRaw]},
		{"corrupt.onnx", corrupt},
		{"garbage.onnx", bytes.Repeat([]byte{0xff}, 100)},
	} {
		path := filepath.Join(t.TempDir(), c.name)
		if err := os.WriteFile(path, c.b, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Load(path)
		if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "truncated or corrupt") {
			t.Errorf("%s: err = %v, want a truncated-or-corrupt error naming the file", c.name, err)
		}
	}
}

// copyModel copies a test model into a temporary directory.
func copyModel(t *testing.T, src string) (path string, orig []byte) {
	t.Helper()
	orig = readFile(t, src)
	path = filepath.Join(t.TempDir(), filepath.Base(src))
	if err := os.WriteFile(path, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	return path, orig
}

func TestWriteIntoMappedRawDataLeavesFile(t *testing.T) {
	setLoadMode(t, true, 16)
	path, orig := copyModel(t, filepath.Join("..", "testdata", "models", "gpt2_opset17.onnx"))
	m := mustLoad(t, path)
	// Appending to a tensor's data must not write into the bytes after it.
	for _, init := range m.Graph().Initializer {
		_ = append(init.RawData, bytes.Repeat([]byte{0xee}, 4096)...)
	}
	if !proto.Equal(m.Proto(), unmarshalFile(t, path)) {
		t.Fatal("appending to a loaded tensor's raw data changed the model")
	}
	var written int
	for _, init := range m.Graph().Initializer {
		if len(init.RawData) >= 16 {
			for i := range init.RawData {
				init.RawData[i] ^= 0x5a
			}
			written++
		}
	}
	if written == 0 {
		t.Fatal("no initializer to write into")
	}
	if !bytes.Equal(readFile(t, path), orig) {
		t.Fatal("writing into a loaded tensor changed the file")
	}
	again := mustLoad(t, path)
	if !proto.Equal(again.Proto(), unmarshalFile(t, path)) {
		t.Error("a second Load does not see the file's data")
	}
	if proto.Equal(again.Proto(), m.Proto()) {
		t.Error("the writes into the first model were lost")
	}
}

// TestSaveOverMappedFile saves another model to the path a mapped model was
// loaded from: Save replaces the file (a new inode), so the loaded model keeps
// its data.
func TestSaveOverMappedFile(t *testing.T) {
	setLoadMode(t, true, 16)
	path, _ := copyModel(t, filepath.Join("..", "testdata", "models", "llama_opset17.onnx"))
	want := unmarshalFile(t, path)
	m := mustLoad(t, path)
	if err := mustLoad(t, mlpPath).Save(path, SaveOptions{ExternalData: ExternalNever}); err != nil {
		t.Fatal(err)
	}
	if err := m.Clone().Save(path, SaveOptions{ExternalData: ExternalNever}); err != nil {
		t.Fatal(err) // saving the mapped model over its own file
	}
	if !proto.Equal(m.Proto(), want) {
		t.Error("the loaded model changed when its file was replaced")
	}
	if !proto.Equal(unmarshalFile(t, path), want) {
		t.Error("saving the mapped model over its own file changed its content")
	}
}

// benchModel is a SmolLM2-shaped model of 650 MB, generated locally (not in git).
var benchModel = filepath.Join("..", "testdata", "bench", "smollm2.onnx")

// BenchmarkLoadLarge loads benchModel by reading it whole (the old way) or by
// mapping it; "+touch" also reads one byte of every page of the weights, which
// is the cost a mapped load moves to the first use. Run one mode per process
// to compare peak RSS, e.g.
//
//	go test ./onnx -run '^$' -bench 'LoadLarge/mmap$' -benchtime 1x
func BenchmarkLoadLarge(b *testing.B) {
	if _, err := os.Stat(benchModel); err != nil {
		b.Skipf("no benchmark model: %v", err)
	}
	for _, mode := range []struct {
		name        string
		mmap, touch bool
	}{{"read", false, false}, {"mmap", true, false}, {"read+touch", false, true}, {"mmap+touch", true, true}} {
		b.Run(mode.name, func(b *testing.B) {
			setLoadMode(b, mode.mmap, 64<<10)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			start := time.Now()
			var sum byte
			for b.Loop() {
				m, err := Load(benchModel)
				if err != nil {
					b.Fatal(err)
				}
				if mode.touch {
					for _, t := range m.Graph().Initializer {
						for i := 0; i < len(t.RawData); i += 4096 {
							sum += t.RawData[i]
						}
					}
				}
			}
			elapsed := time.Since(start)
			runtime.ReadMemStats(&after)
			_ = sum
			b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/float64(b.N)/(1<<20), "MiB-alloc/op")
			b.ReportMetric(elapsed.Seconds()/float64(b.N), "s/load")
		})
	}
}

// ReleaseResident gives the pages of a mapped model that were read back to the kernel
// (the process's file-backed resident memory drops) and loses nothing: the weights read
// the same afterwards.
func TestReleaseResidentDropsFilePages(t *testing.T) {
	setLoadMode(t, true, aliasMin)
	const n = 8 << 20 // 32 MiB of float32
	data := make([]float32, n)
	for i := range data {
		data[i] = float32(i%1000) * 0.5
	}
	g := &onnxpb.GraphProto{Name: proto.String("big")}
	g.Initializer = append(g.Initializer, FloatTensor("w", []int64{n}, data))
	AddInput(g, "x", Float, Dims(1))
	AddOutput(g, "x", Float, Dims(1))
	path := filepath.Join(t.TempDir(), "big.onnx")
	if err := NewModel(&onnxpb.ModelProto{IrVersion: proto.Int64(8), Graph: g, OpsetImport: []*onnxpb.OperatorSetIdProto{{Domain: proto.String(""), Version: proto.Int64(17)}}}).Save(path, SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	m, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := func() (s byte) {
		for _, b := range m.Graph().GetInitializer()[0].GetRawData() {
			s ^= b
		}
		return s
	}
	before := sum() // reads every page
	resident := rssFileKB(t)
	m.ReleaseResident()
	after := rssFileKB(t)
	if resident-after < 16<<10 {
		t.Fatalf("file-backed resident memory %d KiB -> %d KiB after ReleaseResident; want at least 16 MiB less", resident, after)
	}
	if got := sum(); got != before {
		t.Fatal("weights changed after ReleaseResident")
	}
	got, err := TensorFloats(m.Graph().GetInitializer()[0])
	if err != nil || got[12345] != data[12345] || got[n-1] != data[n-1] {
		t.Fatalf("weights after ReleaseResident: %v", err)
	}
}

// rssFileKB is the process's resident file-backed memory (RssFile in /proc/self/status).
func rssFileKB(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "RssFile:" {
			kb, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatal(err)
			}
			return kb
		}
	}
	t.Fatal("no RssFile in /proc/self/status")
	return 0
}

// AlignFloats leaves every large float32 initializer of a mapped model readable in place,
// with the same values.
func TestAlignFloats(t *testing.T) {
	setLoadMode(t, true, 64)
	var misaligned int
	for _, path := range testModelFiles(t) {
		m, err := Load(path)
		if err != nil {
			t.Fatal(err)
		}
		before := map[string][]float32{}
		for _, init := range m.Graph().GetInitializer() {
			if DataType(init.GetDataType()) != Float || len(init.GetRawData()) < 64 {
				continue
			}
			if _, ok := FloatsView(init); !ok {
				misaligned++
			}
			if before[init.GetName()], err = TensorFloats(init); err != nil {
				t.Fatal(err)
			}
		}
		if err := m.AlignFloats(16); err != nil {
			t.Fatal(err)
		}
		for _, init := range m.Graph().GetInitializer() {
			want, ok := before[init.GetName()]
			if !ok {
				continue
			}
			got, ok := FloatsView(init)
			if !ok {
				t.Fatalf("%s: %s still not readable in place", path, init.GetName())
			}
			if !slices.Equal(got, want) {
				t.Fatalf("%s: %s changed", path, init.GetName())
			}
		}
	}
	if misaligned == 0 {
		t.Fatal("no test model has an unaligned mapped weight: the test proves nothing")
	}
}
