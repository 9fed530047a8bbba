package report

import (
	"html/template"
	"image/color"
)

var colorWhite = color.White

// pageData fills pageTemplate.
type pageData struct {
	Title         string
	Runs          []*Run
	Warnings      []Warning
	Table         [][]string // rows: label, then one cell per run
	Charts        []pageChart
	Width, Height int
}

type pageChart struct {
	Metric, Anchor, File string
	Data                 template.URL // the PNG as a data URI
}

var pageTemplate = template.Must(template.New("page").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Title}}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: {{.Width}}px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
td { text-align: right; font-variant-numeric: tabular-nums; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1.5em 0; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
nav a { margin-right: 0.8em; white-space: nowrap; }
.warnings { color: #8a4b00; }
</style>
</head>
<body>
<h1>{{.Title}}</h1>
<p>Runs:</p>
<ul>
{{- range .Runs}}
<li><code>{{.Name}}</code> ({{.Path}})</li>
{{- end}}
</ul>
{{- if .Warnings}}
<details class="warnings">
<summary>{{len .Warnings}} warning(s) while reading the metrics</summary>
<ul>
{{- range .Warnings}}
<li><code>{{.String}}</code></li>
{{- end}}
</ul>
</details>
{{- end}}
<h2 id="final-values">Final values</h2>
<table>
<thead><tr><th>metric</th>{{range .Runs}}<th>{{.Name}}</th>{{end}}</tr></thead>
<tbody>
{{- range .Table}}
<tr>{{range $i, $c := .}}{{if eq $i 0}}<th>{{$c}}</th>{{else}}<td>{{$c}}</td>{{end}}{{end}}</tr>
{{- end}}
</tbody>
</table>
<h2 id="charts">Charts</h2>
<nav>
{{- range .Charts}}
<a href="#{{.Anchor}}">{{.Metric}}</a>
{{- end}}
</nav>
{{- range .Charts}}
<figure id="{{.Anchor}}">
<a href="{{.File}}"><img src="{{.Data}}" alt="{{.Metric}}" width="{{$.Width}}" height="{{$.Height}}"></a>
<figcaption>{{.Metric}} (<a href="{{.File}}">{{.File}}</a>)</figcaption>
</figure>
{{- end}}
</body>
</html>
`))
