"""코스 개요 '빠른 시작'의 LLM 채팅 서비스 (단계 01: 이 앱을 컨테이너로 만듭니다).

이 단계의 주제는 앱이 아니라 컨테이너입니다. 블로킹 호출(`llm.invoke`), 입력 검증,
오류 처리 같은 앱의 문제는 단계 02 에서 고칩니다.
"""

import os

from fastapi import FastAPI
from langchain_google_genai import ChatGoogleGenerativeAI

app = FastAPI()
llm = ChatGoogleGenerativeAI(model=os.getenv("LLM_MODEL", "gemini-3.5-flash"))


@app.get("/health")
def health():
    return {"status": "ok"}


@app.post("/chat")
async def chat(message: str):
    response = llm.invoke(message)
    return {"response": response.content}
