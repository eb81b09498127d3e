package main

import (
	"encoding/json"
	"io"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// Renders the TEMPLATE of a Modelfile (argv[1]) for each conversation read from stdin (JSON) with Go's
// text/template, the engine Ollama runs it with, given .Messages as Ollama gives them; prints the
// prompts as a JSON list. bench_gguf.py runs it (go run) when Go is installed.
func main() {
	modelfile, _ := os.ReadFile(os.Args[1])
	text := strings.SplitN(string(modelfile), `"""`, 3)[1]
	tmpl := template.Must(template.New("t").Parse(text))
	var convs [][]Message
	input, _ := io.ReadAll(os.Stdin)
	if err := json.Unmarshal(input, &convs); err != nil {
		panic(err)
	}
	out := []string{}
	for _, c := range convs {
		var b strings.Builder
		if err := tmpl.Execute(&b, map[string]any{"Messages": c}); err != nil {
			panic(err)
		}
		out = append(out, b.String())
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
