# FastAPI 서버
from fastapi import FastAPI
from langchain_google_genai import ChatGoogleGenerativeAI

app = FastAPI()
llm = ChatGoogleGenerativeAI(model="gemini-2.0-flash-exp")

@app.post("/chat")
async def chat(message: str):
    response = llm.invoke(message)
    return {"response": response.content}
