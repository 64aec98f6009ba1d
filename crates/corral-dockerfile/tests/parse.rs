//! The parser's behaviour through its public API: SDK-generated Dockerfiles, Docker's quoting,
//! expansion and scoping rules, heredocs, and every refusal with its line.

use std::collections::BTreeMap;

use corral_dockerfile::*;

fn no_args() -> BTreeMap<String, String> {
    BTreeMap::new()
}

fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn ok(text: &str) -> Dockerfile {
    match parse(text, &no_args()) {
        Ok(parsed) => parsed,
        Err(e) => panic!("parse failed: {e}\n{text}"),
    }
}

fn err(text: &str) -> DockerfileError {
    match parse(text, &no_args()) {
        Ok(parsed) => panic!("parse succeeded: {parsed:?}\n{text}"),
        Err(e) => e,
    }
}

fn ops(parsed: &Dockerfile) -> Vec<Op> {
    parsed.steps.iter().map(|s| s.op.clone()).collect()
}

fn sv(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn sh(cmd: &str) -> Vec<String> {
    sv(&["/bin/sh", "-c", cmd])
}

fn run(cmd: &str) -> Op {
    Op::Run {
        argv: sh(cmd),
        build_args: vec![],
    }
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn env(items: &[(&str, &str)]) -> Op {
    Op::Env { vars: pairs(items) }
}

fn ctx(path: &str) -> CopySource {
    CopySource::Context(path.to_owned())
}

/// What `Image.debian_slim("3.12").pip_install(["numpy"]).run_commands("echo a",
/// ["sh","-c","echo b"]).env({"A":"x y"}).workdir("/app").entrypoint(["sleep","infinity"])`
/// generates with SDK 0.226.1.
const SDK_IMAGE: &str = "FROM python:3.12.10-slim-bookworm\n\
RUN apt-get update\n\
RUN apt-get install -y gcc gfortran build-essential\n\
RUN pip install --upgrade pip\n\
RUN echo 'debconf debconf/frontend select Noninteractive' | debconf-set-selections\n\
RUN python -m pip install numpy\n\
RUN echo a\n\
RUN \"sh\" \"-c\" \"echo b\"\n\
ENV A='x y'\n\
WORKDIR /app\n\
ENTRYPOINT [\"sleep\", \"infinity\"]\n";

#[test]
fn sdk_generated_image() {
    let parsed = ok(SDK_IMAGE);
    assert_eq!(parsed.base, "python:3.12.10-slim-bookworm");
    assert_eq!(parsed.stage_name, None);
    assert_eq!(
        ops(&parsed),
        vec![
            run("apt-get update"),
            run("apt-get install -y gcc gfortran build-essential"),
            run("pip install --upgrade pip"),
            run("echo 'debconf debconf/frontend select Noninteractive' | debconf-set-selections"),
            run("python -m pip install numpy"),
            run("echo a"),
            run("\"sh\" \"-c\" \"echo b\""),
            env(&[("A", "x y")]),
            Op::Workdir {
                path: "/app".into()
            },
            Op::Entrypoint {
                argv: sv(&["sleep", "infinity"])
            },
        ]
    );
    let lines: Vec<usize> = parsed.steps.iter().map(|s| s.line).collect();
    assert_eq!(lines, (2..=11).collect::<Vec<_>>());
    assert_eq!(parsed.steps[7].text(), "ENV A='x y'");
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
}

/// SDK output for quotes in values: `env({"B": "it's"})`, `workdir("/my dir")`,
/// `add_local_file(...)`, `cmd(["a b"])`, `pip_install_from_requirements`.
#[test]
fn sdk_quoting_and_copies() {
    let parsed = ok("FROM alpine\n\
ENV B='it'\"'\"'s'\n\
WORKDIR '/my dir'\n\
COPY [\"home/u/proj/file.txt\", \"/remote/file.txt\"]\n\
COPY requirements.txt /.requirements.txt\n\
CMD [\"a b\"]\n");
    assert_eq!(
        ops(&parsed),
        vec![
            env(&[("B", "it's")]),
            Op::Workdir {
                path: "/my dir".into()
            },
            Op::Copy {
                sources: vec![ctx("home/u/proj/file.txt")],
                dest: "/remote/file.txt".into(),
                chown: None,
                chmod: None,
            },
            Op::Copy {
                sources: vec![ctx("requirements.txt")],
                dest: "/.requirements.txt".into(),
                chown: None,
                chmod: None,
            },
            Op::Cmd { argv: sv(&["a b"]) },
        ]
    );
}

/// SDK 0.226.1 output for `Image.base("ubuntu:22.04").pip_install("requests",
/// index_url=..., pre=True).add_local_file(f, "/app/").add_local_dir(d, "/app/src")
/// .run_commands(["bash", "-c", "echo \"it's\" $HOME"]).env({"PATH": "/opt/x:$PATH",
/// "Q": "a'b\"c"}).workdir("rel dir").dockerfile_commands(["RUN <<EOF\necho hi\nEOF",
/// "USER 1000"]).cmd(["python", "-c", "print('hi')"])`.
#[test]
fn sdk_generated_variants() {
    let text = r#"FROM ubuntu:22.04
RUN python -m pip install requests --index-url https://x/simple --pre
COPY ["tmp/tmpu2odlbsg/req.txt", "/app/req.txt"]
COPY ["tmp/tmpu2odlbsg/src", "/app/src"]
RUN "bash" "-c" "echo \\\"it\'s\\\" $HOME"
ENV PATH='/opt/x:$PATH'
ENV Q='a'"'"'b"c'
WORKDIR 'rel dir'
RUN <<EOF
echo hi
EOF
USER 1000
CMD ["python", "-c", "print('hi')"]
"#;
    let parsed = ok(text);
    let copy = |src: &str, dest: &str| Op::Copy {
        sources: vec![ctx(src)],
        dest: dest.into(),
        chown: None,
        chmod: None,
    };
    assert_eq!(
        ops(&parsed),
        vec![
            run("python -m pip install requests --index-url https://x/simple --pre"),
            copy("tmp/tmpu2odlbsg/req.txt", "/app/req.txt"),
            copy("tmp/tmpu2odlbsg/src", "/app/src"),
            run(r#""bash" "-c" "echo \\\"it\'s\\\" $HOME""#),
            // Single quotes keep `$PATH` literal, in Docker as here.
            env(&[("PATH", "/opt/x:$PATH")]),
            env(&[("Q", "a'b\"c")]),
            Op::Workdir {
                path: "/rel dir".into()
            },
            run("echo hi\n"),
            Op::User {
                user: "1000".into()
            },
            Op::Cmd {
                argv: sv(&["python", "-c", "print('hi')"])
            },
        ]
    );
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
}

#[test]
fn comments_blank_lines_continuations_and_case() {
    let text = [
        "# a comment",
        "",
        "from alpine:3.20 as base",
        "  # indented comment",
        "run apt-get update && \\",
        "    apt-get install -y \\  ",
        "# a comment inside the continuation",
        "",
        "      curl",
        "",
        "Env X=1",
    ]
    .join("\n");
    let parsed = ok(&text);
    assert_eq!(parsed.base, "alpine:3.20");
    assert_eq!(parsed.stage_name.as_deref(), Some("base"));
    assert_eq!(
        ops(&parsed),
        vec![
            run("apt-get update &&     apt-get install -y       curl"),
            env(&[("X", "1")]),
        ]
    );
    assert_eq!(parsed.steps[0].line, 5);
    assert_eq!(
        parsed.steps[0].text(),
        "run apt-get update &&     apt-get install -y       curl"
    );
    assert_eq!(parsed.steps[1].line, 11);
    assert_eq!(parsed.warnings.len(), 1, "{:?}", parsed.warnings);
    assert!(parsed.warnings[0].contains("empty continuation line"));
}

#[test]
fn escaped_escape_at_end_is_not_a_continuation() {
    let parsed = ok("FROM a\nRUN echo foo\\\\\nRUN echo bar\n");
    assert_eq!(ops(&parsed), vec![run("echo foo\\\\"), run("echo bar")]);
}

#[test]
fn crlf_line_endings() {
    let parsed = ok("FROM a\r\nRUN echo 1 \\\r\n  2\r\nENV K=v\r\n");
    assert_eq!(ops(&parsed), vec![run("echo 1   2"), env(&[("K", "v")])]);
}

#[test]
fn escape_directive_switches_to_backtick() {
    let parsed = ok("# escape=`\n\
FROM a\n\
RUN dir c:\\ `\n  && echo x\n\
ENV P=C:\\path Q=`$HOME\n");
    assert_eq!(
        ops(&parsed),
        vec![
            run("dir c:\\   && echo x"),
            env(&[("P", "C:\\path"), ("Q", "$HOME")]),
        ]
    );
    // A directive after another line is an ordinary comment.
    let parsed = ok("FROM a\n# escape=`\nRUN a \\\n b\n");
    assert_eq!(ops(&parsed), vec![run("a  b")]);
    assert_eq!(err("# escape=x\nFROM a\n").line(), Some(1));
    assert!(
        ok("# syntax=docker/dockerfile:1\nFROM a\n")
            .warnings
            .is_empty()
    );
}

#[test]
fn env_quoting_rules() {
    let parsed = ok(r#"FROM a
ENV A=1 B="x \"y\" $A \q" C='lit $A \n' D=plain\ space E=""
ENV G=$A H=${A}x I="${B}"
ENV legacy hello   "world"  ok
"#);
    assert_eq!(
        ops(&parsed)[..],
        [
            env(&[
                ("A", "1"),
                // Same-instruction pairs do not see each other: A is unset here.
                ("B", "x \"y\"  \\q"),
                ("C", "lit $A \\n"),
                ("D", "plain space"),
                ("E", ""),
            ]),
            env(&[("G", "1"), ("H", "1x"), ("I", "x \"y\"  \\q")]),
            env(&[("legacy", "hello   world  ok")]),
        ][..]
    );
    // The unset $A of the first ENV is reported.
    assert!(
        parsed
            .warnings
            .iter()
            .any(|w| w.starts_with("line 2:") && w.contains("$A")),
        "{:?}",
        parsed.warnings
    );
}

#[test]
fn env_errors() {
    let e = err("FROM a\nENV A=1 B\n");
    assert_eq!(e.line(), Some(2));
    assert!(e.to_string().contains("\"B\" has no '='"), "{e}");
    let e = err("FROM a\nENV lonely\n");
    assert!(e.to_string().contains("has no value"), "{e}");
    let e = err("FROM a\nENV A=\"open\n");
    assert!(e.to_string().contains("never closed"), "{e}");
    let e = err("FROM a\nENV =x\n");
    assert!(e.to_string().contains("name is missing"), "{e}");
}

#[test]
fn arg_substitution_and_scoping() {
    let text = r#"ARG TAG=3.20
ARG REG
FROM ${REG:-docker.io/library}/alpine:$TAG
ARG TAG
ARG V=1.0
ARG NAME
ARG HOME_DIR=/home/$NAME
ENV VERSION=$V
WORKDIR $HOME_DIR
RUN echo $V $TAG
ENV V=from-env
RUN echo again
"#;
    let parsed = parse(
        text,
        &args(&[("NAME", "bob"), ("V", "2.0"), ("EXTRA", "x")]),
    )
    .expect("parses");
    assert_eq!(parsed.base, "docker.io/library/alpine:3.20");
    assert_eq!(
        ops(&parsed),
        vec![
            env(&[("VERSION", "2.0")]),
            Op::Workdir {
                path: "/home/bob".into()
            },
            // RUN text is never expanded; the ARG values ride along as environment.
            Op::Run {
                argv: sh("echo $V $TAG"),
                build_args: pairs(&[
                    ("HOME_DIR", "/home/bob"),
                    ("NAME", "bob"),
                    ("TAG", "3.20"),
                    ("V", "2.0"),
                ]),
            },
            env(&[("V", "from-env")]),
            // ENV wins over the ARG of the same name: V is no longer passed.
            Op::Run {
                argv: sh("echo again"),
                build_args: pairs(&[("HOME_DIR", "/home/bob"), ("NAME", "bob"), ("TAG", "3.20"),]),
            },
        ]
    );
    assert!(
        parsed
            .warnings
            .iter()
            .any(|w| w == "build args not used by any ARG: EXTRA"),
        "{:?}",
        parsed.warnings
    );
}

#[test]
fn pre_from_args_are_invisible_in_the_stage_until_redeclared() {
    let parsed = ok("ARG D=/opt\nFROM a\nWORKDIR ${D:-/fallback}\nARG D\nWORKDIR $D/x\n");
    assert_eq!(
        ops(&parsed),
        vec![
            Op::Workdir {
                path: "/fallback".into()
            },
            Op::Workdir {
                path: "/opt/x".into()
            },
        ]
    );
}

#[test]
fn substitution_modifiers() {
    let parsed = ok(r#"FROM a
ARG SET=val
ARG EMPTY=
ENV A=${SET:-d} B=${EMPTY:-d} C=${EMPTY-d} D=${NOPE-d} E=${SET:+alt} F=${EMPTY:+alt} G=${EMPTY+alt} H=${NOPE+alt} I=${SET:?boom} J=${NOPE:-${SET}-x} K=$ L=a$-b
"#);
    assert_eq!(
        ops(&parsed),
        vec![env(&[
            ("A", "val"),
            ("B", "d"),
            ("C", ""),
            ("D", "d"),
            ("E", "alt"),
            ("F", ""),
            ("G", "alt"),
            ("H", ""),
            ("I", "val"),
            ("J", "val-x"),
            ("K", "$"),
            ("L", "ab"),
        ])]
    );
    // Defaults do not warn about unset names.
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);

    let e = err("FROM a\nENV X=\"${NOPE:?please set NOPE}\"\n");
    assert!(e.to_string().contains("NOPE: please set NOPE"), "{e}");
    let e = err("FROM a\nARG E=\nENV X=${E:?}\n");
    assert!(
        e.to_string().contains("E: is not allowed to be empty"),
        "{e}"
    );
    let e = err("FROM a\nENV X=${PATH#*/}\n");
    assert!(e.to_string().contains("not supported"), "{e}");
    let e = err("FROM a\nENV X=${}\n");
    assert!(e.to_string().contains("bad substitution"), "{e}");
    let e = err("FROM a\nENV X=${OPEN\n");
    assert!(e.to_string().contains("missing '}'"), "{e}");
}

#[test]
fn base_image_env_and_workdir() {
    let base = BaseImage {
        env: pairs(&[("PATH", "/usr/bin:/bin")]),
        working_dir: Some("/srv".into()),
    };
    let parsed = parse_with_base(
        "FROM a\nENV PATH=/opt/bin:$PATH\nWORKDIR app\n",
        &no_args(),
        &base,
    )
    .expect("parses");
    assert_eq!(
        ops(&parsed),
        vec![
            env(&[("PATH", "/opt/bin:/usr/bin:/bin")]),
            Op::Workdir {
                path: "/srv/app".into()
            },
        ]
    );
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    // Without the base image the same text expands $PATH to nothing, with a warning.
    let parsed = ok("FROM a\nENV PATH=/opt/bin:$PATH\n");
    assert_eq!(ops(&parsed), vec![env(&[("PATH", "/opt/bin:")])]);
    assert_eq!(
        parsed.warnings,
        vec!["line 2: $PATH is not set, so it expands to an empty string".to_owned()]
    );
}

#[test]
fn relative_workdir_and_copy_destinations() {
    let parsed = ok("FROM a\n\
WORKDIR app\n\
WORKDIR src/../lib/./x/\n\
WORKDIR ../..\n\
WORKDIR /abs//path\n\
COPY a.txt .\n\
COPY b.txt sub/\n\
COPY c.txt named.txt\n\
COPY d.txt /etc/\n");
    let got = ops(&parsed);
    assert_eq!(
        got[..4],
        [
            Op::Workdir {
                path: "/app".into()
            },
            Op::Workdir {
                path: "/app/lib/x".into()
            },
            Op::Workdir {
                path: "/app".into()
            },
            Op::Workdir {
                path: "/abs/path".into()
            },
        ]
    );
    let dests: Vec<&str> = got[4..]
        .iter()
        .map(|op| match op {
            Op::Copy { dest, .. } => dest.as_str(),
            other => panic!("not a copy: {other:?}"),
        })
        .collect();
    assert_eq!(
        dests,
        vec![
            "/abs/path/",
            "/abs/path/sub/",
            "/abs/path/named.txt",
            "/etc/"
        ]
    );
}

#[test]
fn user_instruction() {
    let parsed = ok("FROM a\nARG UID=1000\nUSER app:${UID}\n");
    assert_eq!(
        ops(&parsed),
        vec![Op::User {
            user: "app:1000".into()
        }]
    );
    assert!(err("FROM a\nUSER a b\n").to_string().contains("one user"));
}

#[test]
fn shell_changes_later_shell_forms() {
    let parsed = ok(r#"FROM a
RUN echo one
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN echo two | cat
RUN ["exec", "form"]
CMD echo three
ENTRYPOINT exec app
"#);
    let bash = |cmd: &str| sv(&["/bin/bash", "-o", "pipefail", "-c", cmd]);
    assert_eq!(
        ops(&parsed),
        vec![
            run("echo one"),
            Op::Run {
                argv: bash("echo two | cat"),
                build_args: vec![]
            },
            Op::Run {
                argv: sv(&["exec", "form"]),
                build_args: vec![]
            },
            Op::Cmd {
                argv: bash("echo three")
            },
            Op::Entrypoint {
                argv: bash("exec app")
            },
        ]
    );
    let e = err("FROM a\nSHELL /bin/bash -c\n");
    assert!(e.to_string().contains("JSON form"), "{e}");
}

#[test]
fn cmd_and_entrypoint_forms() {
    let parsed = ok(
        "FROM a\nCMD [\"python\", \"-m\", \"http.server\"]\nCMD []\nENTRYPOINT [ \"tini\", \"--\" ]\nCMD sleep infinity\n",
    );
    assert_eq!(
        ops(&parsed),
        vec![
            Op::Cmd {
                argv: sv(&["python", "-m", "http.server"])
            },
            Op::Cmd { argv: vec![] },
            Op::Entrypoint {
                argv: sv(&["tini", "--"])
            },
            Op::Cmd {
                argv: sh("sleep infinity")
            },
        ]
    );
}

#[test]
fn a_shell_test_bracket_is_shell_form() {
    let parsed = ok(
        "FROM a\nRUN [ -f /etc/os-release ] && echo yes\nRUN [ \"$(uname -m)\" = x86_64 ]\nRUN [[ -d /x ]]\n",
    );
    assert_eq!(
        ops(&parsed),
        vec![
            run("[ -f /etc/os-release ] && echo yes"),
            run("[ \"$(uname -m)\" = x86_64 ]"),
            run("[[ -d /x ]]"),
        ]
    );
}

#[test]
fn bad_json_forms_are_errors() {
    for text in [
        "FROM a\nCMD ['sleep', 'infinity']\n",
        "FROM a\nENTRYPOINT [\"a\" \"b\"]\n",
        "FROM a\nRUN [\"echo\", \"hi\",]\n",
        "FROM a\nCOPY [\"a\", \"/b\"\n",
    ] {
        let e = err(text);
        assert_eq!(e.line(), Some(2), "{text}");
        assert!(e.to_string().contains("not valid JSON"), "{e}");
    }
    let e = err("FROM a\nCMD [\"a\", 1]\n");
    assert!(e.to_string().contains("strings only"), "{e}");
}

#[test]
fn copy_forms_and_flags() {
    let parsed = ok(r#"FROM a
ARG OWNER=app
WORKDIR /srv
COPY --chown=${OWNER}:staff --chmod=0755 --link src/ ./lib/ /srv/out/
COPY ["with space.txt", "$OWNER.cfg", "/etc/app/"]
COPY "quoted name.txt" ./x.txt
COPY ./ /ctx
ADD notes.md /doc/
"#);
    assert_eq!(
        ops(&parsed),
        vec![
            Op::Workdir {
                path: "/srv".into()
            },
            Op::Copy {
                sources: vec![ctx("src"), ctx("lib")],
                dest: "/srv/out/".into(),
                chown: Some("app:staff".into()),
                chmod: Some(0o755),
            },
            Op::Copy {
                sources: vec![ctx("with space.txt"), ctx("app.cfg")],
                dest: "/etc/app/".into(),
                chown: None,
                chmod: None,
            },
            Op::Copy {
                sources: vec![ctx("quoted name.txt")],
                dest: "/srv/x.txt".into(),
                chown: None,
                chmod: None,
            },
            Op::Copy {
                sources: vec![ctx(".")],
                dest: "/ctx".into(),
                chown: None,
                chmod: None,
            },
            Op::Copy {
                sources: vec![ctx("notes.md")],
                dest: "/doc/".into(),
                chown: None,
                chmod: None,
            },
        ]
    );
}

#[test]
fn copy_errors() {
    let cases: [(&str, &str); 8] = [
        ("COPY a b /dest\n", "ending in '/'"),
        ("COPY onlyone\n", "at least one source"),
        ("COPY ../secret /x\n", "outside the build context"),
        ("COPY --chmod=rwx a /b\n", "octal mode"),
        ("COPY --chmod=17777 a /b\n", "octal mode"),
        ("COPY --chown a /b\n", "needs a value"),
        ("COPY --bogus a /b\n", "unknown flag --bogus"),
        ("COPY https://example.com/x /b\n", "not URLs"),
    ];
    for (body, needle) in cases {
        let e = err(&format!("FROM a\n{body}"));
        assert_eq!(e.line(), Some(2), "{body}");
        assert!(e.to_string().contains(needle), "{body}: {e}");
    }
}

#[test]
fn add_urls_and_archives_are_unsupported() {
    for body in [
        "ADD https://example.com/tool.tgz /opt/",
        "ADD git@github.com:o/r.git /src",
        "ADD app.tar.gz /opt/",
        "ADD --checksum=sha256:00 x /y",
    ] {
        let e = err(&format!("FROM a\n{body}\n"));
        assert!(
            matches!(e, DockerfileError::Unsupported { line: 2, .. }),
            "{body}: {e:?}"
        );
    }
    let e = err("FROM a\nADD http://x/y /z\n");
    assert!(e.to_string().contains("RUN step"), "{e}");
}

#[test]
fn run_heredocs() {
    let parsed = ok("FROM a\n\
RUN <<EOF\n\
apt-get update\n\
apt-get install -y curl\n\
EOF\n\
RUN <<'SCRIPT'\n\
#!/usr/bin/env python3\n\
print(\"hi $HOME\")\n\
SCRIPT\n\
RUN cat <<EOF > /etc/motd && cat <<-END >> /etc/motd\n\
hello\n\
EOF\n\
\tworld\n\
\tEND\n\
RUN <<-EOF\n\
\techo tabbed\n\
\tEOF\n\
ENV AFTER=1\n");
    assert_eq!(
        ops(&parsed),
        vec![
            run("apt-get update\napt-get install -y curl\n"),
            Op::RunScript {
                script: "#!/usr/bin/env python3\nprint(\"hi $HOME\")\n".into(),
                build_args: vec![],
            },
            run("cat <<EOF > /etc/motd && cat <<-END >> /etc/motd\nhello\nEOF\n\tworld\nEND"),
            run("echo tabbed\n"),
            env(&[("AFTER", "1")]),
        ]
    );
    let lines: Vec<usize> = parsed.steps.iter().map(|s| s.line).collect();
    assert_eq!(lines, vec![2, 6, 10, 15, 18]);
    assert_eq!(parsed.steps[0].text(), "RUN <<EOF");
}

#[test]
fn copy_heredocs() {
    let parsed = ok("FROM a\n\
ARG WHO=world\n\
COPY <<EOF /etc/greeting\n\
hello $WHO \\$HOME 'as is' \"too\"\n\
EOF\n\
COPY --chmod=755 <<'RAW' <<-TABS /opt/bin/\n\
echo $WHO\n\
RAW\n\
\tindented\n\
\tTABS\n");
    assert_eq!(
        ops(&parsed),
        vec![
            Op::Copy {
                sources: vec![CopySource::Inline {
                    name: "EOF".into(),
                    content: "hello world $HOME 'as is' \"too\"\n".into(),
                }],
                dest: "/etc/greeting".into(),
                chown: None,
                chmod: None,
            },
            Op::Copy {
                sources: vec![
                    CopySource::Inline {
                        name: "RAW".into(),
                        content: "echo $WHO\n".into(),
                    },
                    CopySource::Inline {
                        name: "TABS".into(),
                        content: "indented\n".into(),
                    },
                ],
                dest: "/opt/bin/".into(),
                chown: None,
                chmod: Some(0o755),
            },
        ]
    );
}

#[test]
fn heredoc_errors_and_non_heredocs() {
    let e = err("FROM a\nRUN <<EOF\necho never closed\n");
    assert_eq!(e.line(), Some(2));
    assert!(e.to_string().contains("not terminated"), "{e}");
    // Quoted, JSON-form and non-RUN/COPY/ADD `<<` are not heredocs.
    let parsed = ok("FROM a\nRUN echo \"<<EOF\"\nRUN [\"echo\", \"<<EOF\"]\nENV X=<<EOF\n");
    assert_eq!(
        ops(&parsed),
        vec![
            run("echo \"<<EOF\""),
            Op::Run {
                argv: sv(&["echo", "<<EOF"]),
                build_args: vec![]
            },
            env(&[("X", "<<EOF")]),
        ]
    );
}

#[test]
fn ignored_instructions_warn_and_labels_are_kept() {
    let parsed = ok(r#"FROM a
ARG V=2
LABEL org.opencontainers.image.version="$V" description="a b"
LABEL legacy form value
EXPOSE 8080/tcp
VOLUME ["/data"]
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s CMD curl -f http://localhost/
ONBUILD RUN echo later
MAINTAINER someone
RUN true
"#);
    assert_eq!(
        parsed.labels,
        pairs(&[
            ("org.opencontainers.image.version", "2"),
            ("description", "a b"),
            ("legacy", "form value"),
        ])
    );
    assert_eq!(
        ops(&parsed),
        vec![Op::Run {
            argv: sh("true"),
            build_args: pairs(&[("V", "2")]),
        }]
    );
    let warned: Vec<&str> = parsed
        .warnings
        .iter()
        .map(|w| w.split(' ').nth(2).unwrap_or_default())
        .collect();
    assert_eq!(
        warned,
        vec![
            "EXPOSE",
            "VOLUME",
            "STOPSIGNAL",
            "HEALTHCHECK",
            "ONBUILD",
            "MAINTAINER"
        ]
    );
    assert!(parsed.warnings[0].starts_with("line 5: EXPOSE is ignored"));
}

#[test]
fn unknown_instruction_names_it_and_its_line() {
    let e = err("FROM a\nRUN apt-get update &&\n    apt-get install -y curl\n");
    assert_eq!(e.line(), Some(3));
    let text = e.to_string();
    assert!(
        text.starts_with("Dockerfile line 3: unknown instruction apt-get"),
        "{text}"
    );
    assert!(text.contains("end that line with \\"), "{text}");
    let e = err("FROM a\nCOPYY a b\n");
    assert_eq!(
        e,
        DockerfileError::Invalid {
            line: 2,
            message: "unknown instruction COPYY (if this line continues the instruction \
                          above, end that line with \\)"
                .into()
        }
    );
}

#[test]
fn multi_stage_is_unsupported() {
    let e = err("FROM golang AS build\nRUN go build\nFROM alpine\n");
    assert!(
        matches!(e, DockerfileError::Unsupported { line: 3, .. }),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("multi-stage builds are not supported"),
        "{e}"
    );
    assert!(e.to_string().contains("line 1"), "{e}");
    let e = err("FROM alpine\nCOPY --from=build /app /app\n");
    assert!(
        matches!(e, DockerfileError::Unsupported { line: 2, .. }),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("multi-stage builds are not supported"),
        "{e}"
    );
    let e = err("FROM --platform=linux/arm64 alpine\n");
    assert!(
        matches!(e, DockerfileError::Unsupported { line: 1, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("--platform"), "{e}");
}

#[test]
fn missing_or_late_from() {
    assert_eq!(err(""), DockerfileError::MissingFrom);
    assert_eq!(
        err("# only a comment\n\nARG X=1\n"),
        DockerfileError::MissingFrom
    );
    let e = err("RUN echo hi\nFROM a\n");
    assert_eq!(e.line(), Some(1));
    assert!(e.to_string().contains("comes before FROM"), "{e}");
    let e = err("FROM\n");
    assert!(e.to_string().contains("FROM needs arguments"), "{e}");
    let e = err("FROM a b\n");
    assert!(e.to_string().contains("optional AS"), "{e}");
    let e = err("ARG IMG\nFROM $IMG\n");
    assert!(e.to_string().contains("does not name an image"), "{e}");
}

#[test]
fn run_flags_are_unsupported() {
    for flag in [
        "--mount=type=cache,target=/root/.cache",
        "--network=none",
        "--security=insecure",
    ] {
        let e = err(&format!("FROM a\nRUN {flag} pip install x\n"));
        assert!(
            matches!(e, DockerfileError::Unsupported { line: 2, .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("is not supported"), "{e}");
    }
    let e = err("FROM a\nRUN --wat echo\n");
    assert!(
        matches!(e, DockerfileError::Invalid { line: 2, .. }),
        "{e:?}"
    );
    assert!(err("FROM a\nRUN []\n").to_string().contains("no command"));
}

#[test]
fn expansion_bombs_and_deep_nesting_are_refused() {
    let mut text = String::from("FROM a\nENV A=0123456789abcdef0123456789abcdef\n");
    for _ in 0..40 {
        text.push_str("ENV A=$A$A$A$A\n");
    }
    let e = err(&text);
    assert!(e.to_string().contains("too much text"), "{e}");

    let depth = 10_000;
    let text = format!(
        "FROM a\nENV X={}x{}\n",
        "${N:-".repeat(depth),
        "}".repeat(depth)
    );
    let e = err(&text);
    assert!(e.to_string().contains("nested too deeply"), "{e}");
}

/// Every prefix of a Dockerfile dense in syntax (cut inside quotes, `${`, JSON, heredocs,
/// continuations) parses to a value or an error, never a panic.
#[test]
fn truncated_input_never_panics() {
    let text = "# escape=\\\nARG A=\"x y\"\nFROM img:${A:-t} AS s\n\
ENV B='q' C=\"$A\\\"\" D=${A:+${B}}\nRUN [\"a\", \"b\"]\nRUN echo \\\n  x\n\
COPY --chown=u:g <<E1 <<-'E2' /d/\n$A\nE1\n\tz\n\tE2\nRUN <<EOF\n#!/bin/sh\nEOF\n\
WORKDIR ../w\nSHELL [\"bash\",\"-c\"]\nCMD echo é\n";
    let mut parsed_whole = false;
    for (at, _) in text.char_indices().chain([(text.len(), ' ')]) {
        let result = parse(&text[..at], &args(&[("A", "1")]));
        if at == text.len() {
            parsed_whole = result.is_ok();
        }
    }
    assert!(parsed_whole, "{:?}", parse(text, &args(&[("A", "1")])));
}

#[test]
fn error_display_carries_the_line() {
    let e = err("FROM a\n\nRUN --mount=type=secret,id=x cat /run/secrets/x\n");
    assert_eq!(
        e.to_string(),
        "Dockerfile line 3: RUN --mount is not supported: corral runs build steps as plain \
             commands in the build sandbox"
    );
}
