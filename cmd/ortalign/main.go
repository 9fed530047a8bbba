// Command ortalign scores and aligns small language models exported to ONNX, with
// ONNX Runtime doing the tensor work. Each subcommand is a thin layer over the
// ortalign library packages.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"ortalign/internal/hugepages"
	"ortalign/onnx/ort"
)

// globalOptions are the flags every command shares.
type globalOptions struct {
	ortLib  string
	threads int
}

func newRootCmd() *cobra.Command {
	g := &globalOptions{}
	root := &cobra.Command{
		Use:   "ortalign",
		Short: "Score and align ONNX language models with ONNX Runtime (DPO, IPO, RLHF)",
		Long: `ortalign scores preference pairs and aligns small causal language models exported
to ONNX, with ONNX Runtime doing the tensor work. Models come from torch.onnx.export or
optimum; datasets are Parquet or JSONL files in TRL's layouts; tokenizers are HuggingFace
tokenizer.json files.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.ortLib, "ort-lib", "", "`PATH` of libonnxruntime.so (default: $ORTALIGN_ORT_LIB, next to the binary, or third_party/ort as make setup installs it)")
	root.PersistentFlags().IntVar(&g.threads, "threads", 0, "ONNX Runtime intra-op threads (0 = all cores)")
	root.AddCommand(newScoreCmd(g, nil), newDPOCmd(g, nil), newSFTCmd(g, nil), newTokenizeCmd(nil), newArtifactsCmd(g, nil), newInspectCmd(g, nil))
	root.AddCommand(newReportCmd(g, nil))
	root.AddCommand(newGenerateCmd(g, nil))
	root.AddCommand(newRLHFCmd(g, nil))
	root.AddCommand(newRewardCmd(g, nil))
	root.AddCommand(newORPOCmd(g, nil))
	root.AddCommand(newCPOCmd(g, nil))
	root.AddCommand(newKTOCmd(g, nil))
	return root
}

// initORT loads ONNX Runtime for commands that run models.
func (g *globalOptions) initORT() error {
	if err := ort.Init(g.ortLib); err != nil {
		if g.ortLib != "" {
			return fmt.Errorf("--ort-lib: %w", err)
		}
		return fmt.Errorf("%w (--ort-lib PATH)", err)
	}
	return nil
}

func main() {
	// Before anything else: glibc reads its tunables only when a process starts.
	hugepages.ReexecWithMallocHugePages("ORTALIGN_NO_HUGEPAGES")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "ortalign:", err)
		os.Exit(1)
	}
}
