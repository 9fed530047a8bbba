package onnx

import (
	"bytes"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx/onnxpb"
)

var (
	mlpPath      = filepath.Join("testdata", "mlp.onnx")
	extPath      = filepath.Join("testdata", "external", "model.onnx")
	extDataPath  = filepath.Join("testdata", "external", "model.onnx_data")
	unknownPath  = filepath.Join("testdata", "unknown_fields.onnx")
	initializers = []string{"W1", "b1", "W2", "b2", "scale16", "out_shape"}
)

func TestLoadInlineValues(t *testing.T) {
	exp := loadExpected(t)
	m := mustLoad(t, mlpPath)
	if got := m.Opset(""); got != 17 {
		t.Errorf("Opset(\"\") = %d, want 17", got)
	}
	if got := m.Opset("ai.onnx"); got != 17 {
		t.Errorf("Opset(ai.onnx) = %d, want 17", got)
	}
	if got := m.Opset("com.microsoft"); got != 0 {
		t.Errorf("Opset(com.microsoft) = %d, want 0", got)
	}
	g := m.Graph()
	for name, want := range exp.Initializers {
		init := Initializer(g, name)
		if init == nil {
			t.Fatalf("initializer %q missing", name)
		}
		got, err := TensorFloats(init)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("%s: %d values, want %d", name, len(got), len(want))
		}
		for i := range got {
			if float64(got[i]) != want[i] {
				t.Fatalf("%s[%d] = %v, want %v", name, i, got[i], want[i])
			}
		}
	}
	shape, err := TensorInt64s(Initializer(g, "out_shape"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(shape, exp.OutShape) {
		t.Errorf("out_shape = %v, want %v", shape, exp.OutShape)
	}
}

func TestInlineRoundTripIsByteIdentical(t *testing.T) {
	for _, src := range []string{mlpPath, unknownPath} {
		t.Run(filepath.Base(src), func(t *testing.T) {
			orig := readFile(t, src)
			m := mustLoad(t, src)
			b, err := m.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b, orig) {
				t.Errorf("Marshal differs from the original file (%d vs %d bytes)", len(b), len(orig))
			}
			out := filepath.Join(t.TempDir(), "m.onnx")
			if err := m.Save(out, SaveOptions{}); err != nil {
				t.Fatal(err)
			}
			if got := readFile(t, out); !bytes.Equal(got, orig) {
				t.Errorf("saved file differs from the original (%d vs %d bytes)", len(got), len(orig))
			}
			if names := listDir(t, filepath.Dir(out)); len(names) != 1 {
				t.Errorf("inline save wrote %v, want just the model", names)
			}
		})
	}
}

func TestUnknownFieldsSurvive(t *testing.T) {
	exp := loadExpected(t)
	graphUnknown, _ := hex.DecodeString(exp.GraphUnknownHex)
	modelUnknown, _ := hex.DecodeString(exp.ModelUnknownHex)
	m := mustLoad(t, unknownPath)
	if got := m.Proto().ProtoReflect().GetUnknown(); !bytes.Equal(got, modelUnknown) {
		t.Errorf("ModelProto unknown fields = %x, want %x", got, modelUnknown)
	}
	if got := m.Graph().ProtoReflect().GetUnknown(); !bytes.Equal(got, graphUnknown) {
		t.Errorf("GraphProto unknown fields = %x, want %x", got, graphUnknown)
	}
	// Editing the model keeps them too.
	if err := SetTensorFloats(Initializer(m.Graph(), "b2"), []float32{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(b, modelUnknown) || !bytes.Contains(b, graphUnknown) {
		t.Error("unknown fields lost after editing")
	}
	c := m.Clone()
	if got := c.Graph().ProtoReflect().GetUnknown(); !bytes.Equal(got, graphUnknown) {
		t.Error("Clone lost the unknown fields")
	}
}

func TestLoadExternalData(t *testing.T) {
	exp := loadExpected(t)
	m := mustLoad(t, extPath)
	inline := mustLoad(t, mlpPath)
	if !proto.Equal(m.Proto(), inline.Proto()) {
		t.Error("model with external data, once loaded, differs from the inline model")
	}
	var offset int64
	for _, name := range initializers {
		init := Initializer(m.Graph(), name)
		loc, ok := m.ExternalLocation(init)
		if !ok {
			t.Fatalf("%s: no external location remembered", name)
		}
		if loc.Location != "model.onnx_data" || loc.Offset != offset || loc.Length != int64(len(init.RawData)) {
			t.Errorf("%s: location %+v, want model.onnx_data at %d, %d bytes", name, loc, offset, len(init.RawData))
		}
		offset += loc.Length
		if init.GetDataLocation() == onnxpb.TensorProto_EXTERNAL || init.ExternalData != nil {
			t.Errorf("%s: external fields not cleared after loading", name)
		}
	}
	got, err := TensorFloats(Initializer(m.Graph(), "W2"))
	if err != nil {
		t.Fatal(err)
	}
	for i, w := range exp.Initializers["W2"] {
		if float64(got[i]) != w {
			t.Fatalf("W2[%d] = %v, want %v", i, got[i], w)
		}
	}
}

func TestSaveKeepsExternalLayout(t *testing.T) {
	// A model whose Constant node tensor is external too keeps that layout.
	attrDir := filepath.Join("testdata", "external_attr")
	am := mustLoad(t, filepath.Join(attrDir, "model.onnx"))
	if !proto.Equal(am.Proto(), mustLoad(t, mlpPath).Proto()) {
		t.Error("external_attr model, once loaded, differs from the inline model")
	}
	cond := FindAttr(am.Graph().Node[5], "value").T
	if loc, ok := am.ExternalLocation(cond); !ok || loc.Offset != 290 || loc.Length != 1 {
		t.Errorf("Constant tensor location %+v, %v; want offset 290, length 1", loc, ok)
	}
	attrOut := filepath.Join(t.TempDir(), "model.onnx")
	if err := am.Save(attrOut, SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"model.onnx", "model.onnx_data"} {
		if !bytes.Equal(readFile(t, filepath.Join(filepath.Dir(attrOut), name)), readFile(t, filepath.Join(attrDir, name))) {
			t.Errorf("external_attr: saved %s differs from the original", name)
		}
	}

	origModel := readFile(t, extPath)
	origData := readFile(t, extDataPath)
	m := mustLoad(t, extPath)
	dir := t.TempDir()
	out := filepath.Join(dir, "aligned.onnx")
	if err := m.Save(out, SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	if names := listDir(t, dir); !slices.Equal(names, []string{"aligned.onnx", "model.onnx_data"}) {
		t.Fatalf("saved files %v, want [aligned.onnx model.onnx_data]", names)
	}
	if got := readFile(t, out); !bytes.Equal(got, origModel) {
		t.Errorf("saved model differs from the original (%d vs %d bytes)", len(got), len(origModel))
	}
	if got := readFile(t, filepath.Join(dir, "model.onnx_data")); !bytes.Equal(got, origData) {
		t.Errorf("saved data file differs from the original (%d vs %d bytes)", len(got), len(origData))
	}

	// New values, same layout: only the data bytes change.
	w1 := Initializer(m.Graph(), "W1")
	vals, _ := TensorFloats(w1)
	for i := range vals {
		vals[i] *= 2
	}
	if err := SetTensorFloats(w1, vals); err != nil {
		t.Fatal(err)
	}
	if err := m.Save(out, SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, out); !bytes.Equal(got, origModel) {
		t.Error("model file changed although only weights changed")
	}
	m2 := mustLoad(t, out)
	got, _ := TensorFloats(Initializer(m2.Graph(), "W1"))
	if !slices.Equal(got, vals) {
		t.Error("re-loaded W1 does not have the new values")
	}
	if names := listDir(t, dir); len(names) != 2 {
		t.Errorf("files after second save: %v (temporary files left?)", names)
	}

	if pythonWithONNX() == "" {
		t.Log("python3 with onnx not found; skipping the onnx.checker sub-check")
		return
	}
	runPython(t, `
import sys, onnx, numpy as np
from onnx import numpy_helper
onnx.checker.check_model(sys.argv[1])
m = onnx.load(sys.argv[1])
ref = onnx.load(sys.argv[2])
got = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
for t in ref.graph.initializer:
    a = numpy_helper.to_array(t)
    if t.name == "W1":
        a = a * 2
    b = got[t.name]
    assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), t.name
`, out, mlpPath)
}

func TestSaveModes(t *testing.T) {
	tests := []struct {
		name      string
		src       string
		opts      SaveOptions
		wantFiles []string
		wantExt   []string // initializers that must be external
	}{
		{"inline auto", mlpPath, SaveOptions{}, []string{"m.onnx"}, nil},
		{"inline always", mlpPath, SaveOptions{ExternalData: ExternalAlways, SizeThreshold: 64},
			[]string{"m.onnx", "m.onnx_data"}, []string{"W1", "W2"}},
		{"inline always all", mlpPath, SaveOptions{ExternalData: ExternalAlways, SizeThreshold: -1, ExternalDataName: "w/weights.bin"},
			[]string{"m.onnx", "w"}, initializers},
		{"external never", extPath, SaveOptions{ExternalData: ExternalNever}, []string{"m.onnx"}, nil},
		{"external always", extPath, SaveOptions{ExternalData: ExternalAlways}, []string{"m.onnx", "model.onnx_data"}, initializers},
	}
	var saved []string
	root := t.TempDir() // outlives the subtests, for the Python check
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := mustLoad(t, tc.src)
			dir := filepath.Join(root, strconv.Itoa(i))
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(dir, "m.onnx")
			saved = append(saved, out)
			if err := m.Save(out, tc.opts); err != nil {
				t.Fatal(err)
			}
			if got := listDir(t, dir); !slices.Equal(got, tc.wantFiles) {
				t.Errorf("files %v, want %v", got, tc.wantFiles)
			}
			// Which tensors are external in the written proto?
			var p onnxpb.ModelProto
			if err := proto.Unmarshal(readFile(t, out), &p); err != nil {
				t.Fatal(err)
			}
			var ext []string
			for _, init := range p.Graph.Initializer {
				if init.GetDataLocation() == onnxpb.TensorProto_EXTERNAL {
					ext = append(ext, init.GetName())
				}
			}
			if !slices.Equal(ext, tc.wantExt) {
				t.Errorf("external tensors %v, want %v", ext, tc.wantExt)
			}
			back := mustLoad(t, out)
			if !proto.Equal(back.Proto(), mustLoad(t, mlpPath).Proto()) {
				t.Error("re-loaded model differs from the original")
			}
		})
	}
	if pythonWithONNX() == "" {
		t.Log("python3 with onnx not found; skipping the onnx.checker sub-check")
		return
	}
	runPython(t, `
import sys, onnx, numpy as np
from onnx import numpy_helper
ref = {t.name: numpy_helper.to_array(t) for t in onnx.load(sys.argv[1]).graph.initializer}
for path in sys.argv[2:]:
    onnx.checker.check_model(path)
    for t in onnx.load(path).graph.initializer:
        a = numpy_helper.to_array(t)
        assert a.dtype == ref[t.name].dtype and np.array_equal(a, ref[t.name]), (path, t.name)
`, append([]string{mlpPath}, saved...)...)
}

func TestSaveAutoSwitchesToExternalWhenTooLarge(t *testing.T) {
	m := mustLoad(t, mlpPath)
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	defer func(old int) { maxProtoSize = old }(maxProtoSize)
	maxProtoSize = len(b) - 100 // moving W1 (128 bytes) and W2 (96) out makes it fit

	if _, err := m.Marshal(); err == nil {
		t.Error("Marshal of an oversized model succeeded")
	}
	dir := t.TempDir()
	if err := m.Save(filepath.Join(dir, "never.onnx"), SaveOptions{ExternalData: ExternalNever}); err == nil {
		t.Error("ExternalNever save of an oversized model succeeded")
	}
	if got := listDir(t, dir); len(got) != 0 {
		t.Errorf("failed save left files: %v", got)
	}
	out := filepath.Join(dir, "auto.onnx")
	if err := m.Save(out, SaveOptions{SizeThreshold: 64}); err != nil {
		t.Fatal(err)
	}
	if got := listDir(t, dir); !slices.Equal(got, []string{"auto.onnx", "auto.onnx_data"}) {
		t.Errorf("files %v", got)
	}
	if st, _ := os.Stat(out); st.Size() > int64(maxProtoSize) {
		t.Errorf("saved model is %d bytes, over the limit %d", st.Size(), maxProtoSize)
	}
	back := mustLoad(t, out)
	if !proto.Equal(back.Proto(), mustLoad(t, mlpPath).Proto()) {
		t.Error("re-loaded model differs")
	}
	if _, ok := back.ExternalLocation(Initializer(back.Graph(), "W1")); !ok {
		t.Error("W1 should be external")
	}
	// Too large even with every tensor external.
	maxProtoSize = 100
	if err := m.Save(filepath.Join(dir, "tiny.onnx"), SaveOptions{SizeThreshold: -1}); err == nil {
		t.Error("save succeeded although the graph alone exceeds the limit")
	}
}

// Clone reads its source only: clones made at once, beside a reader of the weights,
// all equal the source, which is left as it was (an earlier Clone detached the raw
// data while it copied, so two at once lost it).
func TestConcurrentClones(t *testing.T) {
	for _, path := range []string{mlpPath, extPath, unknownPath} {
		m := mustLoad(t, path)
		want := proto.Clone(m.Proto())
		clones := make([]*Model, 8)
		var wg sync.WaitGroup
		for i := range clones {
			wg.Add(1)
			go func() {
				defer wg.Done()
				clones[i] = m.Clone()
			}()
		}
		sizes := 0
		for range 100 {
			for _, init := range m.Graph().GetInitializer() {
				sizes += len(init.GetRawData())
			}
		}
		wg.Wait()
		if !proto.Equal(m.Proto(), want) {
			t.Fatalf("%s: cloning changed the source", path)
		}
		if wantSizes := 100 * rawBytes(want.(*onnxpb.ModelProto)); sizes != wantSizes {
			t.Errorf("%s: a reader beside the clones saw %d bytes of raw data, want %d", path, sizes, wantSizes)
		}
		for i, c := range clones {
			if !proto.Equal(c.Proto(), want) {
				t.Errorf("%s: clone %d differs from the source", path, i)
			}
		}
	}
}

func rawBytes(p *onnxpb.ModelProto) int {
	n := 0
	for _, init := range p.GetGraph().GetInitializer() {
		n += len(init.GetRawData())
	}
	return n
}

func TestCloneKeepsLayout(t *testing.T) {
	m := mustLoad(t, extPath)
	c := m.Clone()
	if !proto.Equal(c.Proto(), m.Proto()) {
		t.Fatal("clone differs")
	}
	// Replace a tensor in the clone by a new proto of the same name: the
	// layout follows the name.
	g := c.Graph()
	b1 := RemoveInitializer(g, "b1")
	if b1 == nil {
		t.Fatal("RemoveInitializer(b1) = nil")
	}
	if err := AddInitializer(g, proto.Clone(b1).(*onnxpb.TensorProto)); err != nil {
		t.Fatal(err)
	}
	// The clone's graph is its own, its weights' bytes are shared (no copy of the
	// weights); replacing a tensor's data in the clone leaves the original as it was.
	w1, cw1 := Initializer(m.Graph(), "W1"), Initializer(g, "W1")
	if &w1.RawData[0] != &cw1.RawData[0] {
		t.Error("clone copied the tensor data instead of sharing it")
	}
	before := append([]byte(nil), w1.RawData...)
	vals, err := TensorFloats(cw1)
	if err != nil {
		t.Fatal(err)
	}
	vals[0]++
	if err := SetTensorFloats(cw1, vals); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(w1.RawData, before) || bytes.Equal(cw1.RawData, before) {
		t.Error("setting the clone's tensor changed the original, or did not change the clone")
	}
	cw1.Dims[0]++ // the structure is deep
	if w1.Dims[0] == cw1.Dims[0] {
		t.Error("clone shares tensor dims with the original")
	}
	cw1.Dims[0]--
	dir := t.TempDir()
	if err := c.Save(filepath.Join(dir, "model.onnx"), SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	back := mustLoad(t, filepath.Join(dir, "model.onnx"))
	for _, name := range initializers {
		a, _ := m.ExternalLocation(Initializer(m.Graph(), name))
		b, ok := back.ExternalLocation(Initializer(back.Graph(), name))
		if !ok || a.Location != b.Location || a.Offset != b.Offset || a.Length != b.Length {
			t.Errorf("%s: layout %+v after clone+save, want %+v", name, b, a)
		}
	}
}

func TestLoadBadInput(t *testing.T) {
	good := readFile(t, mlpPath)
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// Every proper prefix of the file must be rejected.
	for n := 0; n < len(good); n++ {
		if _, err := LoadBytes(good[:n]); err == nil {
			t.Fatalf("LoadBytes of the first %d of %d bytes succeeded", n, len(good))
		}
	}
	if _, err := Load(write("trunc.onnx", good[:len(good)/2])); err == nil || !strings.Contains(err.Error(), "trunc.onnx") {
		t.Errorf("truncated file: err = %v, want an error naming the file", err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 200 {
		b := make([]byte, 1+rng.IntN(2000))
		for j := range b {
			b[j] = byte(rng.UintN(256))
		}
		if _, err := LoadBytes(b); err == nil {
			t.Errorf("garbage input %d parsed as a model", i)
		}
	}
	for _, b := range [][]byte{nil, []byte("hello, world"), bytes.Repeat([]byte{0xff}, 64)} {
		if _, err := LoadBytes(b); err == nil {
			t.Errorf("LoadBytes(%q) succeeded", b)
		}
	}
	if _, err := Load(filepath.Join(dir, "does-not-exist.onnx")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: err = %v, want ErrNotExist", err)
	}
	// A model with external data cannot be loaded from bytes alone.
	if _, err := LoadBytes(readFile(t, extPath)); err == nil || !strings.Contains(err.Error(), "W1") {
		t.Errorf("LoadBytes of an external-data model: err = %v, want an error naming W1", err)
	}
}

func TestLoadBadExternalData(t *testing.T) {
	modelBytes := readFile(t, extPath)
	data := readFile(t, extDataPath)
	setup := func(t *testing.T, edit func(*onnxpb.TensorProto), dataBytes []byte) string {
		dir := t.TempDir()
		var p onnxpb.ModelProto
		if err := proto.Unmarshal(modelBytes, &p); err != nil {
			t.Fatal(err)
		}
		if edit != nil {
			edit(Initializer(p.Graph, "W2"))
		}
		b, err := proto.Marshal(&p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "model.onnx"), b, 0o644); err != nil {
			t.Fatal(err)
		}
		if dataBytes != nil {
			if err := os.WriteFile(filepath.Join(dir, "model.onnx_data"), dataBytes, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return filepath.Join(dir, "model.onnx")
	}
	setKey := func(key, value string) func(*onnxpb.TensorProto) {
		return func(t *onnxpb.TensorProto) {
			for _, e := range t.ExternalData {
				if e.GetKey() == key {
					e.Value = proto.String(value)
				}
			}
		}
	}
	tests := []struct {
		name    string
		edit    func(*onnxpb.TensorProto)
		data    []byte
		wantErr []string
	}{
		{"missing data file", nil, nil, []string{`initializer "W1"`, "external data model.onnx_data", "no such file"}},
		{"truncated data file", nil, data[:200], []string{`initializer "W2"`, "past the end"}},
		{"offset past end", setKey("offset", "100000"), data, []string{`initializer "W2"`, "offset 100000"}},
		{"bad offset", setKey("offset", "-4"), data, []string{`initializer "W2"`, "offset"}},
		{"wrong length", setKey("length", "8"), data, []string{`initializer "W2"`, "does not match"}},
		{"absolute location", setKey("location", "/etc/passwd"), data, []string{`initializer "W2"`, "relative"}},
		{"escaping location", setKey("location", "../../x"), data, []string{`initializer "W2"`, "outside"}},
		{"no location", func(t *onnxpb.TensorProto) { t.ExternalData = t.ExternalData[1:] }, data, []string{`initializer "W2"`, "no location"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := setup(t, tc.edit, tc.data)
			_, err := Load(path)
			if err == nil {
				t.Fatal("Load succeeded")
			}
			for _, want := range append(tc.wantErr, path) {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}

func TestSaveIsAtomic(t *testing.T) {
	m := mustLoad(t, extPath)
	t.Run("target is a directory", func(t *testing.T) {
		dir := t.TempDir()
		target := filepath.Join(dir, "model.onnx")
		if err := os.Mkdir(target, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := m.Save(target, SaveOptions{}); err == nil {
			t.Fatal("Save onto a directory succeeded")
		}
		if got := listDir(t, dir); !slices.Equal(got, []string{"model.onnx"}) {
			t.Errorf("files after failed save: %v", got)
		}
	})
	t.Run("data file is a directory", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Mkdir(filepath.Join(dir, "model.onnx_data"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := m.Save(filepath.Join(dir, "out.onnx"), SaveOptions{}); err == nil {
			t.Fatal("Save succeeded")
		}
		if got := listDir(t, dir); !slices.Equal(got, []string{"model.onnx_data"}) {
			t.Errorf("files after failed save: %v", got)
		}
	})
	t.Run("directory missing", func(t *testing.T) {
		dir := t.TempDir()
		if err := m.Save(filepath.Join(dir, "no", "such", "m.onnx"), SaveOptions{}); err == nil {
			t.Fatal("Save into a missing directory succeeded")
		}
		if got := listDir(t, dir); len(got) != 0 {
			t.Errorf("files after failed save: %v", got)
		}
	})
	t.Run("directory not writable", func(t *testing.T) {
		// A read-only directory; for root, whom permissions do not stop, a regular file
		// where the directory should be (no one can create a file in it).
		parent := t.TempDir()
		dir, left := parent, []string(nil)
		if os.Geteuid() == 0 {
			dir, left = filepath.Join(parent, "file"), []string{"file"}
			if err := os.WriteFile(dir, []byte("not a directory"), 0o644); err != nil {
				t.Fatal(err)
			}
		} else {
			if err := os.Chmod(dir, 0o555); err != nil {
				t.Fatal(err)
			}
			defer os.Chmod(dir, 0o755)
		}
		for _, opts := range []SaveOptions{{}, {ExternalData: ExternalAlways}} {
			if err := m.Save(filepath.Join(dir, "m.onnx"), opts); err == nil {
				t.Fatalf("Save into %s succeeded", dir)
			}
			if got := listDir(t, parent); !slices.Equal(got, left) {
				t.Errorf("files after failed save: %v, want %v", got, left)
			}
		}
	})
	t.Run("existing model kept on failure", func(t *testing.T) {
		dir := t.TempDir()
		target := filepath.Join(dir, "m.onnx")
		if err := os.WriteFile(target, []byte("old"), 0o644); err != nil {
			t.Fatal(err)
		}
		err := m.Save(target, SaveOptions{ExternalDataName: "../escape.bin", ExternalData: ExternalAlways})
		if err == nil {
			t.Fatal("Save with an escaping data name succeeded")
		}
		if got := readFile(t, target); string(got) != "old" {
			t.Error("failed save changed the existing model")
		}
		if got := listDir(t, dir); !slices.Equal(got, []string{"m.onnx"}) {
			t.Errorf("files after failed save: %v", got)
		}
	})
	t.Run("overwrite in place", func(t *testing.T) {
		dir := t.TempDir()
		target := filepath.Join(dir, "model.onnx")
		if err := m.Save(target, SaveOptions{}); err != nil {
			t.Fatal(err)
		}
		m2 := mustLoad(t, target)
		if err := m2.Save(target, SaveOptions{}); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(readFile(t, filepath.Join(dir, "model.onnx_data")), readFile(t, extDataPath)) {
			t.Error("overwriting in place changed the data")
		}
	})
}

func TestSetOpset(t *testing.T) {
	m := mustLoad(t, mlpPath)
	m.SetOpset("ai.onnx", 18)
	m.SetOpset("com.microsoft", 1)
	if m.Opset("") != 18 || m.Opset("com.microsoft") != 1 || len(m.Proto().OpsetImport) != 2 {
		t.Errorf("opsets after SetOpset: %v", m.Proto().OpsetImport)
	}
}

func TestSaveAppendsNewTensorsToExistingDataFile(t *testing.T) {
	m := mustLoad(t, extPath)
	g := m.Graph()
	small := FloatTensor("small", []int64{2}, []float32{1, 2})
	big := FloatTensor("big", []int64{1500}, make([]float32, 1500)) // 6000 bytes
	for _, init := range []*onnxpb.TensorProto{small, big} {
		if err := AddInitializer(g, init); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "aligned.onnx")
	if err := m.Save(out, SaveOptions{ExternalData: ExternalAlways, SizeThreshold: -1}); err != nil {
		t.Fatal(err)
	}
	if got := listDir(t, dir); !slices.Equal(got, []string{"aligned.onnx", "model.onnx_data"}) {
		t.Fatalf("files %v", got)
	}
	back := mustLoad(t, out)
	want := map[string]int64{"W1": 0, "out_shape": 274, "small": 290, "big": 4096}
	for name, off := range want {
		loc, ok := back.ExternalLocation(Initializer(back.Graph(), name))
		if !ok || loc.Location != "model.onnx_data" || loc.Offset != off {
			t.Errorf("%s: %+v, want model.onnx_data at %d", name, loc, off)
		}
	}
	data := readFile(t, filepath.Join(dir, "model.onnx_data"))
	if !bytes.Equal(data[:290], readFile(t, extDataPath)) || len(data) != 4096+6000+1 { // + the Constant node's 1-byte tensor
		t.Errorf("data file: %d bytes, original prefix kept: %v", len(data), bytes.Equal(data[:290], readFile(t, extDataPath)))
	}
	if !proto.Equal(back.Proto(), m.Proto()) {
		t.Error("re-loaded model differs")
	}
}

// TestLoadPerTensorFiles covers the layout torch.onnx.export writes for large
// models: one file per tensor, with only a location key.
func TestLoadPerTensorFiles(t *testing.T) {
	m := mustLoad(t, mlpPath)
	dir := t.TempDir()
	w1 := Initializer(m.Graph(), "W1")
	data := w1.RawData
	if err := os.WriteFile(filepath.Join(dir, "W1.bin"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	p := proto.Clone(m.Proto()).(*onnxpb.ModelProto)
	pw := Initializer(p.Graph, "W1")
	pw.RawData = nil
	pw.DataLocation = onnxpb.TensorProto_EXTERNAL.Enum()
	pw.ExternalData = []*onnxpb.StringStringEntryProto{{Key: proto.String("location"), Value: proto.String("W1.bin")}}
	b, err := proto.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "model.onnx"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	back := mustLoad(t, filepath.Join(dir, "model.onnx"))
	if !bytes.Equal(Initializer(back.Graph(), "W1").RawData, data) {
		t.Fatal("W1 data not loaded")
	}
	out := filepath.Join(dir, "out", "model.onnx")
	if err := os.Mkdir(filepath.Dir(out), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := back.Save(out, SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := listDir(t, filepath.Dir(out)); !slices.Equal(got, []string{"W1.bin", "model.onnx"}) {
		t.Errorf("files %v", got)
	}
	if !bytes.Equal(readFile(t, filepath.Join(filepath.Dir(out), "W1.bin")), data) {
		t.Error("W1.bin changed")
	}
}

// FuzzLoadBytes checks that no input makes loading, summarizing or
// re-marshaling panic.
func FuzzLoadBytes(f *testing.F) {
	good, err := os.ReadFile(mlpPath)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte{0x3a, 0x05, 0x0a, 0x03, 0x12, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := LoadBytes(b)
		if err != nil {
			return
		}
		Summary(m)
		for _, init := range m.Graph().Initializer {
			TensorFloats(init)
			TensorInt64s(init)
		}
		TopologicalSort(m.Graph())
		m.Marshal()
	})
}
