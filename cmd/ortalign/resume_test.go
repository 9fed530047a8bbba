package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"ortalign/pipeline/engine"
)

// killedRunArgs is the bundled DPO run with frequent checkpoints and a linear schedule
// (whose rates depend on the step, so a resume at the wrong step would show).
func killedRunArgs(out string) string {
	return strings.Join([]string{"dpo", "--model", tinyLlama, "--data", trainData, "--tokenizer", tinyTok, "--out", out,
		"--max-length", "128", "--truncation", "keep_end", "--lr", "1e-3", "--epochs", "1", "--seed", "1", "--threads", "1",
		"--checkpoint-every", "4", "--max-steps", "30", "--lr-scheduler", "linear"}, " ")
}

// cliCommand runs the real CLI (main) in a subprocess of the test binary; see TestMain.
func cliCommand(ctx context.Context, args string) (*exec.Cmd, *bytes.Buffer) {
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "ORTALIGN_TEST_MAIN=1", "ORTALIGN_TEST_ARGS="+args)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	return cmd, &out
}

// runCLI runs the CLI to completion within 60 s and returns its output.
func runCLI(t *testing.T, args string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd, out := cliCommand(ctx, args)
	if err := cmd.Run(); err != nil {
		t.Fatalf("ortalign %s: %v\n%s", args, err, out)
	}
	return out.String()
}

// untimed is a metrics.jsonl without its wall-clock values (engine.WallClock: time/*,
// train_runtime and the rates on it), which differ from run to run; every other value,
// line and key order is kept.
func untimed(t *testing.T, metrics []byte) string {
	t.Helper()
	var out strings.Builder
	for _, line := range strings.SplitAfter(string(metrics), "\n") {
		if line == "" {
			continue
		}
		var m engine.Metrics
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		m = slices.DeleteFunc(m, func(x engine.Metric) bool { return engine.WallClock(x.Name) })
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		out.Write(append(b, '\n'))
	}
	return out.String()
}

// TestSIGKILLAndResumeMatchesUninterruptedRun: a dpo run killed with SIGKILL mid-run
// (after at least 10 steps, with checkpoints every 4) and then run again with the same
// command ends with the metrics.jsonl and model.onnx of a run never interrupted: the
// model byte for byte, the metrics line for line and value for value but for the
// wall-clock ones (time/step_s, train_runtime, ...): the resume starts at the last
// checkpoint and drops the metrics lines logged after it.
func TestSIGKILLAndResumeMatchesUninterruptedRun(t *testing.T) {
	straight, killed := t.TempDir(), t.TempDir()
	runCLI(t, killedRunArgs(straight))

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd, out := cliCommand(ctx, killedRunArgs(killed))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	metrics := filepath.Join(killed, "metrics.jsonl")
	deadline := time.After(60 * time.Second)
	var linesAtKill int
poll:
	for {
		select {
		case err := <-exited:
			t.Fatalf("the run ended before it was killed (%v):\n%s", err, out)
		case <-deadline:
			_ = cmd.Process.Kill()
			t.Fatalf("metrics.jsonl did not reach 10 lines in 60 s:\n%s", out)
		case <-time.After(5 * time.Millisecond):
			b, _ := os.ReadFile(metrics)
			if n := bytes.Count(b, []byte("\n")); n >= 10 {
				if err := cmd.Process.Kill(); err != nil {
					t.Fatal(err)
				}
				linesAtKill = n
				break poll
			}
		}
	}
	err := <-exited
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("the run was not killed by SIGKILL: %v\n%s", err, out)
	}
	after, _ := os.ReadFile(metrics)
	if n := bytes.Count(after, []byte("\n")); n >= 30 {
		t.Fatalf("the run had finished (%d metrics lines) when it was killed", n)
	}
	if _, err := os.Stat(filepath.Join(killed, "model.onnx")); err == nil {
		t.Fatal("the killed run wrote model.onnx")
	}
	if _, err := os.Stat(filepath.Join(killed, "checkpoint.bin")); err != nil {
		t.Fatalf("the killed run left no checkpoint: %v", err)
	}

	log := runCLI(t, killedRunArgs(killed))
	m := regexp.MustCompile(`resuming from \S+checkpoint\.bin at step (\d+)\n`).FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("the second run did not say it resumed:\n%s", log)
	}
	step, _ := strconv.Atoi(m[1])
	if step%4 != 0 || step < 8 || step > linesAtKill {
		t.Fatalf("resumed at step %d; killed with %d metrics lines, checkpoints every 4 steps", step, linesAtKill)
	}
	t.Logf("killed with %d metrics lines; resumed at step %d", bytes.Count(after, []byte("\n")), step)

	for _, name := range []string{"metrics.jsonl", "model.onnx"} {
		want, err := os.ReadFile(filepath.Join(straight, name))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(killed, name))
		if err != nil {
			t.Fatal(err)
		}
		if name == "metrics.jsonl" {
			if g, w := untimed(t, got), untimed(t, want); g != w {
				t.Errorf("metrics.jsonl differs from the uninterrupted run's (wall-clock values left out):\nresumed:\n%s\nuninterrupted:\n%s", g, w)
			}
		} else if !bytes.Equal(got, want) {
			t.Errorf("%s differs from the uninterrupted run's (%d and %d bytes)", name, len(got), len(want))
		}
	}
}
